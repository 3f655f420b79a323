//! Command messages (spec section 7.2): `[name, transaction id, command
//! object, args...]` in AMF0. Only the client commands that say where a
//! connection is going are interpreted; the rest are recognised by name and
//! ignored without decoding their arguments.

use super::amf0::{Amf0Error, Decoder, Value};
use super::chunk::MSG_COMMAND_AMF3;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `connect(txid, {app, tcUrl, ...})` (spec 7.2.1.1).
    Connect {
        app: Option<String>,
        tc_url: Option<String>,
    },
    /// FMLE-style announcements before `publish` (not in the spec; sent by
    /// ffmpeg, OBS and FMLE) naming the stream about to be published.
    ReleaseStream(Option<String>),
    FcPublish(Option<String>),
    /// `publish(txid, null, name, type)` (spec 7.2.2.6); `kind` is the
    /// publishing type ("live", "record", "append") when present.
    Publish {
        name: Option<String>,
        kind: Option<String>,
    },
    /// `play(txid, null, name, ...)` (spec 7.2.2.1).
    Play(Option<String>),
    /// Anything else (createStream, getStreamLength, _checkbw, ...).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    Amf0(Amf0Error),
    /// The message does not start with a command name string.
    NoName,
    /// `connect` whose command object is not an object.
    BadConnect,
}

impl CommandError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Amf0(_) => "bad_amf0",
            Self::NoName => "bad_command",
            Self::BadConnect => "bad_connect",
        }
    }
}

impl From<Amf0Error> for CommandError {
    fn from(e: Amf0Error) -> Self {
        Self::Amf0(e)
    }
}

/// Decodes a command message of type 20 (AMF0) or 17 (AMF3).
pub fn parse(msg_type: u8, payload: &[u8]) -> Result<Command, CommandError> {
    // Spec 7.1.1: AMF3 command messages start with a format selector byte 0
    // and are AMF0 from there (values may switch to AMF3 via marker 0x11,
    // which clients don't do for these commands). A command name starts
    // with the string marker 2, so a missing selector is unambiguous.
    let body = match payload.split_first() {
        Some((0, rest)) if msg_type == MSG_COMMAND_AMF3 => rest,
        _ => payload,
    };
    let mut d = Decoder::new(body);
    let Some(Value::String(name)) = d.next_value()? else {
        return Err(CommandError::NoName);
    };
    let mut arg = |n: usize| -> Result<Option<Value>, CommandError> {
        // Skips n-1 values, returns the nth (None if the message ends first).
        for _ in 1..n {
            if d.next_value()?.is_none() {
                return Ok(None);
            }
        }
        Ok(d.next_value()?)
    };
    let string = |v: Option<Value>| match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(match name.as_str() {
        "connect" => match arg(2)? {
            Some(obj @ Value::Object(_)) => Command::Connect {
                app: string(obj.get("app").cloned()),
                tc_url: string(obj.get("tcUrl").cloned()),
            },
            _ => return Err(CommandError::BadConnect),
        },
        // Args after the transaction id and the null command object.
        "releaseStream" => Command::ReleaseStream(string(arg(3)?)),
        "FCPublish" => Command::FcPublish(string(arg(3)?)),
        "play" => Command::Play(string(arg(3)?)),
        "publish" => Command::Publish {
            name: string(arg(3)?),
            kind: string(arg(1)?),
        },
        _ => Command::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::super::amf0::enc;
    use super::*;

    fn cmd(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn connect() {
        let m = cmd(&[
            enc::string("connect"),
            enc::number(1.0),
            enc::object(&[
                ("app", "live"),
                ("type", "nonprivate"),
                ("tcUrl", "rtmp://h/live"),
            ]),
        ]);
        assert_eq!(
            parse(20, &m),
            Ok(Command::Connect {
                app: Some("live".into()),
                tc_url: Some("rtmp://h/live".into())
            })
        );
        let m = cmd(&[enc::string("connect"), enc::number(1.0), enc::null()]);
        assert_eq!(parse(20, &m), Err(CommandError::BadConnect));
        let m = cmd(&[enc::string("connect"), enc::number(1.0), enc::object(&[])]);
        assert_eq!(
            parse(20, &m),
            Ok(Command::Connect {
                app: None,
                tc_url: None
            })
        );
    }

    #[test]
    fn publish_and_friends() {
        let head = |n: &str| [enc::string(n), enc::number(5.0), enc::null()].concat();
        let key = enc::string("key?token=abc");
        let m = cmd(&[head("publish"), key.clone(), enc::string("record")]);
        assert_eq!(
            parse(20, &m),
            Ok(Command::Publish {
                name: Some("key?token=abc".into()),
                kind: Some("record".into())
            })
        );
        let m = cmd(&[head("publish"), key.clone()]);
        assert_eq!(
            parse(20, &m),
            Ok(Command::Publish {
                name: Some("key?token=abc".into()),
                kind: None
            })
        );
        let m = cmd(&[head("publish"), enc::number(3.0)]);
        assert_eq!(
            parse(20, &m),
            Ok(Command::Publish {
                name: None,
                kind: None
            })
        );
        let m = cmd(&[head("FCPublish"), key.clone()]);
        assert_eq!(
            parse(20, &m),
            Ok(Command::FcPublish(Some("key?token=abc".into())))
        );
        let m = cmd(&[head("releaseStream"), key.clone()]);
        assert_eq!(
            parse(20, &m),
            Ok(Command::ReleaseStream(Some("key?token=abc".into())))
        );
        let m = cmd(&[head("play"), key, enc::number(-2000.0)]);
        assert_eq!(
            parse(20, &m),
            Ok(Command::Play(Some("key?token=abc".into())))
        );
        assert_eq!(parse(20, &head("play")), Ok(Command::Play(None)));
        assert_eq!(parse(20, &head("createStream")), Ok(Command::Other));
    }

    #[test]
    fn amf3_command_message() {
        let m = cmd(&[
            vec![0],
            enc::string("play"),
            enc::number(0.0),
            enc::null(),
            enc::string("k"),
        ]);
        assert_eq!(parse(17, &m), Ok(Command::Play(Some("k".into()))));
        // Without the selector byte it still parses; with it as type 20 it doesn't.
        assert_eq!(parse(17, &m[1..]), Ok(Command::Play(Some("k".into()))));
        assert_eq!(parse(20, &m), Err(CommandError::NoName));
    }

    #[test]
    fn malformed() {
        assert_eq!(parse(20, &[]), Err(CommandError::NoName));
        assert_eq!(parse(20, &enc::number(1.0)), Err(CommandError::NoName));
        assert_eq!(
            parse(20, &[2, 0, 9, b'c']),
            Err(CommandError::Amf0(Amf0Error::Truncated))
        );
        let m = cmd(&[enc::string("publish"), enc::number(5.0), vec![0x42]]);
        assert_eq!(
            parse(20, &m),
            Err(CommandError::Amf0(Amf0Error::UnknownMarker(0x42)))
        );
        // Arguments of uninteresting commands are not even decoded.
        let m = cmd(&[enc::string("_checkbw"), vec![0x42]]);
        assert_eq!(parse(20, &m), Ok(Command::Other));
    }
}
