//! Command messages (spec section 7.2): `[name, transaction id, command
//! object, args...]` in AMF0. Only the client commands the front answers
//! or routes by, and the server answers it judges, are interpreted; the
//! rest are recognised by name and ignored without decoding their
//! arguments.

use super::amf0::{Amf0Error, Decoder, Value};
use super::chunk::MSG_COMMAND_AMF3;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `connect(txid, {app, tcUrl, ...})` (spec 7.2.1.1).
    Connect {
        app: Option<String>,
        tc_url: Option<String>,
        /// 0 (AMF0) or 3 (AMF3), echoed in the answer.
        object_encoding: Option<f64>,
        client: ClientFields,
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
    /// `createStream(txid, null)` (spec 7.2.1.3).
    CreateStream,
    /// `getStreamLength(txid, null, name)`: players ask before `play`.
    GetStreamLength,
    /// Anything else (_checkbw, FCSubscribe, deleteStream, ...).
    Other,
}

/// What a `connect` says of the client beyond app and tcUrl: passed to
/// the auth hook as nginx-rtmp passes it (`flashver`, `swfurl`, `pageurl`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFields {
    pub flash_ver: Option<String>,
    pub swf_url: Option<String>,
    pub page_url: Option<String>,
}

/// A command and its transaction id (0: no answer expected).
#[derive(Debug, Clone, PartialEq)]
pub struct Invoke {
    pub txid: f64,
    pub command: Command,
}

/// What a media server says to the client's commands.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `_result` (`ok`) or `_error` to the command with `txid`; `value` is
    /// the argument after the command object: createStream's stream id,
    /// or an `_error`'s information object.
    Result {
        txid: f64,
        ok: bool,
        value: Option<Value>,
    },
    /// `onStatus(0, null, {level, code, description})` (spec 7.2.2).
    Status(Status),
    Other,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub level: String,
    pub code: String,
    pub description: String,
}

impl Status {
    /// The fields of an information object; missing ones are empty.
    pub fn from_info(info: Option<&Value>) -> Self {
        let field = |k: &str| {
            info.and_then(|i| i.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            level: field("level"),
            code: field("code"),
            description: field("description"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    Amf0(Amf0Error),
    /// The message does not start with a command name string.
    NoName,
    /// `connect` whose command object is not an object.
    BadConnect,
    /// `_result` or `_error` without a transaction id.
    NoTransaction,
}

impl CommandError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Amf0(_) => "bad_amf0",
            Self::NoName => "bad_command",
            Self::BadConnect => "bad_connect",
            Self::NoTransaction => "bad_answer",
        }
    }
}

impl From<Amf0Error> for CommandError {
    fn from(e: Amf0Error) -> Self {
        Self::Amf0(e)
    }
}

/// The name and a decoder positioned after it.
fn start(msg_type: u8, payload: &[u8]) -> Result<(String, Decoder<'_>), CommandError> {
    // Spec 7.1.1: AMF3 command messages start with a format selector byte 0
    // and are AMF0 from there (values may switch to AMF3 via marker 0x11,
    // which clients don't do for these commands). A command name starts
    // with the string marker 2, so a missing selector is unambiguous.
    let body = match payload.split_first() {
        Some((0, rest)) if msg_type == MSG_COMMAND_AMF3 => rest,
        _ => payload,
    };
    let mut d = Decoder::new(body);
    match d.next_value()? {
        Some(Value::String(name)) => Ok((name, d)),
        _ => Err(CommandError::NoName),
    }
}

/// Decodes a client's command message of type 20 (AMF0) or 17 (AMF3).
pub fn parse(msg_type: u8, payload: &[u8]) -> Result<Invoke, CommandError> {
    let (name, mut d) = start(msg_type, payload)?;
    let mut txid = 0.0;
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
    let interesting = matches!(
        name.as_str(),
        "connect"
            | "releaseStream"
            | "FCPublish"
            | "play"
            | "publish"
            | "createStream"
            | "getStreamLength"
    );
    if interesting {
        if let Some(Value::Number(n)) = arg(1)? {
            txid = n;
        }
    }
    let command = match name.as_str() {
        "connect" => match arg(1)? {
            Some(obj @ Value::Object(_)) => Command::Connect {
                app: string(obj.get("app").cloned()),
                tc_url: string(obj.get("tcUrl").cloned()),
                object_encoding: match obj.get("objectEncoding") {
                    Some(Value::Number(n)) => Some(*n),
                    _ => None,
                },
                client: ClientFields {
                    flash_ver: string(obj.get("flashVer").cloned()),
                    swf_url: string(obj.get("swfUrl").cloned()),
                    page_url: string(obj.get("pageUrl").cloned()),
                },
            },
            _ => return Err(CommandError::BadConnect),
        },
        // Args after the null command object.
        "releaseStream" => Command::ReleaseStream(string(arg(2)?)),
        "FCPublish" => Command::FcPublish(string(arg(2)?)),
        "play" => Command::Play(string(arg(2)?)),
        "publish" => Command::Publish {
            name: string(arg(2)?),
            kind: string(arg(1)?),
        },
        "createStream" => Command::CreateStream,
        "getStreamLength" => Command::GetStreamLength,
        _ => Command::Other,
    };
    Ok(Invoke { txid, command })
}

/// The payload of a client's `publish` or `play` message (type 20 or 17)
/// with its stream name, the argument after the command object, replaced
/// by `name`. The command name, transaction id, command object and the
/// arguments after the name (publish's type, play's start, duration,
/// reset) are the decoded values encoded again with [`super::amf0::encode`]:
/// identical bytes for the strings, numbers, booleans and nulls clients
/// send there, though an ECMA array would come back as an object and a
/// short long-string as a string. An AMF3 message (17) keeps its format
/// selector byte. A message too short to have a name gets the missing
/// transaction id (0) and command object (null) before it.
///
/// `None` for any other command, or if any value fails to decode (the
/// front only decoded up to the name; a rewrite must understand all of it).
pub fn rename(msg_type: u8, payload: &[u8], name: &str) -> Option<Vec<u8>> {
    let (command, mut d) = start(msg_type, payload).ok()?;
    if !matches!(command.as_str(), "publish" | "play") {
        return None;
    }
    let mut values = vec![Value::String(command)];
    while let Some(v) = d.next_value().ok()? {
        values.push(v);
    }
    // Positions 1 and 2: transaction id and command object (spec 7.2.2).
    if values.len() < 2 {
        values.push(Value::Number(0.0));
    }
    if values.len() < 3 {
        values.push(Value::Null);
    }
    match values.get_mut(3) {
        Some(v) => *v = Value::String(name.to_owned()),
        None => values.push(Value::String(name.to_owned())),
    }
    let mut out = Vec::with_capacity(payload.len().saturating_add(name.len()));
    // The same test `start` used to skip it.
    if msg_type == MSG_COMMAND_AMF3 && payload.first() == Some(&0) {
        out.push(0);
    }
    super::amf0::encode(&values, &mut out);
    Some(out)
}

/// Decodes a media server's command message (type 20 or 17).
pub fn parse_answer(msg_type: u8, payload: &[u8]) -> Result<Answer, CommandError> {
    let (name, mut d) = start(msg_type, payload)?;
    let ok = match name.as_str() {
        "_result" => true,
        "_error" => false,
        "onStatus" => {
            // Transaction id and command object first.
            d.next_value()?;
            d.next_value()?;
            return Ok(Answer::Status(Status::from_info(d.next_value()?.as_ref())));
        }
        _ => return Ok(Answer::Other),
    };
    let txid = match d.next_value()? {
        Some(Value::Number(n)) => n,
        _ => return Err(CommandError::NoTransaction),
    };
    d.next_value()?;
    Ok(Answer::Result {
        txid,
        ok,
        value: d.next_value()?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::amf0::enc;
    use super::*;

    fn command_of(msg_type: u8, m: &[u8]) -> Result<Command, CommandError> {
        parse(msg_type, m).map(|i| i.command)
    }

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
                ("flashVer", "FMLE/3.0 (compatible; FMSc/1.0)"),
                ("tcUrl", "rtmp://h/live"),
            ]),
        ]);
        assert_eq!(
            command_of(20, &m),
            Ok(Command::Connect {
                app: Some("live".into()),
                tc_url: Some("rtmp://h/live".into()),
                object_encoding: None,
                client: ClientFields {
                    flash_ver: Some("FMLE/3.0 (compatible; FMSc/1.0)".into()),
                    ..Default::default()
                },
            })
        );
        let m = cmd(&[enc::string("connect"), enc::number(1.0), enc::null()]);
        assert_eq!(command_of(20, &m), Err(CommandError::BadConnect));
        let m = cmd(&[enc::string("connect"), enc::number(1.0), enc::object(&[])]);
        assert_eq!(
            command_of(20, &m),
            Ok(Command::Connect {
                app: None,
                tc_url: None,
                object_encoding: None,
                client: ClientFields::default(),
            })
        );
    }

    #[test]
    fn publish_and_friends() {
        let head = |n: &str| [enc::string(n), enc::number(5.0), enc::null()].concat();
        let key = enc::string("key?token=abc");
        let m = cmd(&[head("publish"), key.clone(), enc::string("record")]);
        assert_eq!(
            command_of(20, &m),
            Ok(Command::Publish {
                name: Some("key?token=abc".into()),
                kind: Some("record".into())
            })
        );
        let m = cmd(&[head("publish"), key.clone()]);
        assert_eq!(
            command_of(20, &m),
            Ok(Command::Publish {
                name: Some("key?token=abc".into()),
                kind: None
            })
        );
        let m = cmd(&[head("publish"), enc::number(3.0)]);
        assert_eq!(
            command_of(20, &m),
            Ok(Command::Publish {
                name: None,
                kind: None
            })
        );
        let m = cmd(&[head("FCPublish"), key.clone()]);
        assert_eq!(
            command_of(20, &m),
            Ok(Command::FcPublish(Some("key?token=abc".into())))
        );
        let m = cmd(&[head("releaseStream"), key.clone()]);
        assert_eq!(
            command_of(20, &m),
            Ok(Command::ReleaseStream(Some("key?token=abc".into())))
        );
        let m = cmd(&[head("play"), key, enc::number(-2000.0)]);
        assert_eq!(
            command_of(20, &m),
            Ok(Command::Play(Some("key?token=abc".into())))
        );
        assert_eq!(command_of(20, &head("play")), Ok(Command::Play(None)));
        assert_eq!(
            command_of(20, &head("createStream")),
            Ok(Command::CreateStream)
        );
        assert_eq!(parse(20, &head("createStream")).unwrap().txid, 5.0);
        assert_eq!(command_of(20, &head("_checkbw")), Ok(Command::Other));
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
        assert_eq!(command_of(17, &m), Ok(Command::Play(Some("k".into()))));
        // Without the selector byte it still parses; with it as type 20 it doesn't.
        assert_eq!(command_of(17, &m[1..]), Ok(Command::Play(Some("k".into()))));
        assert_eq!(command_of(20, &m), Err(CommandError::NoName));
    }

    #[test]
    fn server_answers() {
        let info = enc::object(&[
            ("level", "error"),
            ("code", "NetStream.Publish.BadName"),
            ("description", "Already publishing"),
        ]);
        let m = cmd(&[
            enc::string("onStatus"),
            enc::number(0.0),
            enc::null(),
            info.clone(),
        ]);
        let want = Status {
            level: "error".into(),
            code: "NetStream.Publish.BadName".into(),
            description: "Already publishing".into(),
        };
        assert_eq!(parse_answer(20, &m), Ok(Answer::Status(want)));
        let m = cmd(&[
            enc::string("_result"),
            enc::number(4.0),
            enc::null(),
            enc::number(1.0),
        ]);
        assert_eq!(
            parse_answer(20, &m),
            Ok(Answer::Result {
                txid: 4.0,
                ok: true,
                value: Some(Value::Number(1.0))
            })
        );
        let m = cmd(&[enc::string("_error"), enc::number(1.0), enc::null(), info]);
        let Ok(Answer::Result {
            ok: false, value, ..
        }) = parse_answer(20, &m)
        else {
            panic!()
        };
        assert_eq!(
            Status::from_info(value.as_ref()).description,
            "Already publishing"
        );
        let m = cmd(&[enc::string("_result"), enc::string("x")]);
        assert_eq!(parse_answer(20, &m), Err(CommandError::NoTransaction));
        let m = cmd(&[enc::string("onBWDone"), enc::number(0.0)]);
        assert_eq!(parse_answer(20, &m), Ok(Answer::Other));
    }

    #[test]
    fn malformed() {
        assert_eq!(command_of(20, &[]), Err(CommandError::NoName));
        assert_eq!(command_of(20, &enc::number(1.0)), Err(CommandError::NoName));
        assert_eq!(
            command_of(20, &[2, 0, 9, b'c']),
            Err(CommandError::Amf0(Amf0Error::Truncated))
        );
        let m = cmd(&[enc::string("publish"), enc::number(5.0), vec![0x42]]);
        assert_eq!(
            command_of(20, &m),
            Err(CommandError::Amf0(Amf0Error::UnknownMarker(0x42)))
        );
        // Arguments of uninteresting commands are not even decoded.
        let m = cmd(&[enc::string("_checkbw"), vec![0x42]]);
        assert_eq!(command_of(20, &m), Ok(Command::Other));
    }
}
