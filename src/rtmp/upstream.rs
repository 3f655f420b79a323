//! A media server's answers to the client's commands, which the proxy
//! replays to it verbatim after answering them itself: the answers the
//! client already has are dropped, a `createStream` answer must give the
//! stream id the client was given, and the server's `onStatus` for the
//! `publish` or `play` decides whether it took the stream.

use super::chunk::{MSG_COMMAND_AMF0, MSG_COMMAND_AMF3};
use super::command::{self, Answer, Status};
use super::rechunk::{Header, Judgement};
use super::{amf0::Value, Answered, Role, STREAM_ID};

/// Why a server did not take the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// An `_error` to a command, or an `onStatus` of level `error`.
    Declined(Status),
    /// `createStream` gave another message stream id than the client's.
    OtherStreamId(f64),
}

/// Judges the messages a server sends before it has taken the stream.
pub struct Judge {
    started: &'static str,
    waiting: Vec<Answered>,
    pub refusal: Option<Refusal>,
}

impl Judge {
    pub fn new(role: &Role, answered: &[Answered]) -> Self {
        Self {
            started: match role {
                Role::Publish { .. } => "NetStream.Publish.Start",
                Role::Play => "NetStream.Play.Start",
            },
            waiting: answered.to_vec(),
            refusal: None,
        }
    }

    pub fn judge(&mut self, h: &Header, payload: &[u8]) -> Judgement {
        if !matches!(h.msg_type, MSG_COMMAND_AMF0 | MSG_COMMAND_AMF3) {
            return Judgement::Forward;
        }
        // What the proxy cannot read it leaves to the client.
        let Ok(answer) = command::parse_answer(h.msg_type, payload) else {
            return Judgement::Forward;
        };
        match answer {
            Answer::Result { txid, ok, value } => {
                let Some(at) = self.waiting.iter().position(|a| a.txid == txid) else {
                    return Judgement::Forward;
                };
                let asked = self.waiting.swap_remove(at);
                if !ok {
                    return self.refuse(Refusal::Declined(Status::from_info(value.as_ref())));
                }
                match value {
                    Some(Value::Number(id)) if asked.gave_stream && id != f64::from(STREAM_ID) => {
                        self.refuse(Refusal::OtherStreamId(id))
                    }
                    _ => Judgement::Drop,
                }
            }
            Answer::Status(status) if status.level == "error" => {
                self.refuse(Refusal::Declined(status))
            }
            Answer::Status(status) if status.code == self.started => Judgement::Accept,
            Answer::Status(_) | Answer::Other => Judgement::Forward,
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> Judgement {
        self.refusal = Some(refusal);
        Judgement::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::super::amf0::enc;
    use super::*;

    fn h() -> Header {
        Header {
            csid: 3,
            timestamp: 0,
            len: 0,
            msg_type: MSG_COMMAND_AMF0,
            msid: 0,
        }
    }

    fn answered() -> Vec<Answered> {
        vec![
            Answered {
                txid: 1.0,
                gave_stream: false,
            },
            Answered {
                txid: 4.0,
                gave_stream: true,
            },
        ]
    }

    fn publish() -> Role {
        Role::Publish {
            kind: "live".into(),
        }
    }

    fn result(name: &str, txid: f64, value: Vec<u8>) -> Vec<u8> {
        [enc::string(name), enc::number(txid), enc::null(), value].concat()
    }

    fn status(level: &str, code: &str) -> Vec<u8> {
        let info = enc::object(&[("level", level), ("code", code), ("description", "d")]);
        [enc::string("onStatus"), enc::number(0.0), enc::null(), info].concat()
    }

    #[test]
    fn answers_the_client_has_are_dropped_and_the_start_accepts() {
        let mut j = Judge::new(&publish(), &answered());
        assert_eq!(
            j.judge(&h(), &result("_result", 1.0, enc::null())),
            Judgement::Drop
        );
        // Answered once only: a second one is not the proxy's to drop.
        assert_eq!(
            j.judge(&h(), &result("_result", 1.0, enc::null())),
            Judgement::Forward
        );
        assert_eq!(
            j.judge(&h(), &result("_result", 4.0, enc::number(1.0))),
            Judgement::Drop
        );
        assert_eq!(
            j.judge(&h(), &result("onBWDone", 0.0, enc::null())),
            Judgement::Forward
        );
        assert_eq!(
            j.judge(&h(), &status("status", "NetStream.Play.Reset")),
            Judgement::Forward
        );
        let mut media = h();
        media.msg_type = 9;
        assert_eq!(j.judge(&media, b"\x17"), Judgement::Forward);
        assert_eq!(
            j.judge(&h(), &status("status", "NetStream.Publish.Start")),
            Judgement::Accept
        );
        assert_eq!(j.refusal, None);
        // A player is accepted at Play.Start, not Publish.Start.
        let mut j = Judge::new(&Role::Play, &[]);
        assert_eq!(
            j.judge(&h(), &status("status", "NetStream.Publish.Start")),
            Judgement::Forward
        );
        assert_eq!(
            j.judge(&h(), &status("status", "NetStream.Play.Start")),
            Judgement::Accept
        );
    }

    #[test]
    fn refusals() {
        let mut j = Judge::new(&publish(), &answered());
        let bad = status("error", "NetStream.Publish.BadName");
        assert_eq!(j.judge(&h(), &bad), Judgement::Refuse);
        let Some(Refusal::Declined(s)) = &j.refusal else {
            panic!("{:?}", j.refusal)
        };
        assert_eq!(
            (s.code.as_str(), s.description.as_str()),
            ("NetStream.Publish.BadName", "d")
        );

        let mut j = Judge::new(&publish(), &answered());
        assert_eq!(
            j.judge(&h(), &result("_result", 4.0, enc::number(2.0))),
            Judgement::Refuse
        );
        assert_eq!(j.refusal, Some(Refusal::OtherStreamId(2.0)));

        let mut j = Judge::new(&publish(), &answered());
        let info = enc::object(&[
            ("level", "error"),
            ("code", "NetConnection.Connect.Rejected"),
        ]);
        assert_eq!(
            j.judge(&h(), &result("_error", 1.0, info)),
            Judgement::Refuse
        );
        // An _error to a command the proxy did not answer is the client's.
        let mut j = Judge::new(&publish(), &answered());
        assert_eq!(
            j.judge(&h(), &result("_error", 9.0, enc::null())),
            Judgement::Forward
        );
    }
}
