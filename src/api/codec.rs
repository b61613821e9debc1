//! The one JSON-lines codec of the API: a request or a reply is one JSON object on one
//! line. Every party reads and writes lines through it: the daemon's server (which
//! frames lines on its async socket and decodes them here), the CLI, the CNI plugin, a
//! successor ucanal's hand-over ask, and the integration tests (through [`Client`]).
//!
//! A reply is `{"ok":true,"message":..}` for a command, `{"ok":true,"data":..}` for a
//! query or each item of a stream, `{"ok":true,"done":true}` at the end of a stream, and
//! `{"ok":false,"error":{"code":..,"message":..}}` for a refusal.

use std::fmt::Display;
use std::io::{self, BufRead, BufReader, Read, Write};

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorCode};
use super::request::{Command, Query, Request, Stream};

/// The longest request line the daemon reads, in bytes (a service with thousands of
/// endpoints fits; a bigger manifest goes in parts).
pub const MAX_REQUEST: usize = 1 << 20;

/// One reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    /// The last line of a stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
}

impl<T> Reply<T> {
    pub fn message(m: impl Into<String>) -> Self {
        Reply { ok: true, error: None, message: Some(m.into()), data: None, done: false }
    }
    pub fn data(d: T) -> Self {
        Reply { ok: true, error: None, message: None, data: Some(d), done: false }
    }
    pub fn error(e: ApiError) -> Self {
        Reply { ok: false, error: Some(e), message: None, data: None, done: false }
    }
    pub fn done() -> Self {
        Reply { ok: true, error: None, message: None, data: None, done: true }
    }
}

/// A value as one line: its JSON and a newline.
pub fn line<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut l = serde_json::to_vec(v).unwrap_or_else(|e| {
        let e = ApiError::new(ErrorCode::Internal, format!("unserialisable reply: {e}"));
        serde_json::to_vec(&Reply::<()>::error(e)).unwrap_or_default()
    });
    l.push(b'\n');
    l
}

/// A reply line: `r`'s data, or the error.
pub fn reply_line<T: Serialize>(r: Result<T, ApiError>) -> Vec<u8> {
    match r {
        Ok(d) => line(&Reply::data(d)),
        Err(e) => error_line(e),
    }
}

/// A command's reply line: its message, or the error.
pub fn message_line(r: Result<String, ApiError>) -> Vec<u8> {
    match r {
        Ok(m) => line(&Reply::<()>::message(m)),
        Err(e) => error_line(e),
    }
}

pub fn error_line(e: ApiError) -> Vec<u8> {
    line(&Reply::<()>::error(e))
}

/// Reads a request line (without its newline); bytes that are not UTF-8 are replaced.
pub fn decode_request(line: &[u8]) -> Result<Request, ApiError> {
    Request::decode(&String::from_utf8_lossy(line))
}

/// Why a call through [`Client`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error.
    #[error("{0}")]
    Refused(#[from] ApiError),
    #[error("sending to {peer}: {source}")]
    Send { peer: String, source: io::Error },
    #[error("reading from {peer}: {source}")]
    Recv { peer: String, source: io::Error },
    #[error("ucanal closed the connection without answering")]
    Closed,
    #[error("bad response from ucanal: {0}")]
    BadReply(serde_json::Error),
    #[error("ucanal answered without the data asked for")]
    NoData,
}

/// A blocking connection that speaks the API (over a Unix stream, or any byte stream):
/// requests out, replies in, one line each. Timeouts are the stream's own.
pub struct Client<S: Read + Write> {
    r: BufReader<S>,
    peer: String,
}

impl<S: Read + Write> Client<S> {
    /// `peer` names the other end in errors (a socket path, `@ucanal in <netns>`).
    pub fn new(stream: S, peer: impl Display) -> Self {
        Client { r: BufReader::new(stream), peer: peer.to_string() }
    }

    /// A command: its message.
    pub fn command(&mut self, c: Command) -> Result<String, ClientError> {
        Ok(self.call::<IgnoredAny>(&Request::Command(c))?.message.unwrap_or_default())
    }

    /// A query: its data.
    pub fn query<T: DeserializeOwned>(&mut self, q: Query) -> Result<T, ClientError> {
        self.call(&Request::Query(q))?.data.ok_or(ClientError::NoData)
    }

    /// Sends a request and reads its reply; an error reply is [`ClientError::Refused`].
    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<Reply<T>, ClientError> {
        self.call_line(&line(req))
    }

    /// [`Client::call`] with a request already encoded (a line, newline included).
    pub fn call_line<T: DeserializeOwned>(&mut self, request: &[u8]) -> Result<Reply<T>, ClientError> {
        // A daemon that refuses the peer answers and closes before reading: the write
        // may fail, and the refusal is still there to read.
        let sent = self.r.get_mut().write_all(request).and_then(|()| self.r.get_mut().flush());
        match self.recv() {
            Err(ClientError::Closed) => match sent {
                Err(source) => Err(ClientError::Send { peer: self.peer.clone(), source }),
                Ok(()) => Err(ClientError::Closed),
            },
            r => r,
        }
    }

    /// A stream: `each` gets every item until the daemon says `done` (or `each` says
    /// stop by returning false).
    pub fn stream<T: DeserializeOwned>(
        &mut self,
        s: Stream,
        mut each: impl FnMut(T) -> bool,
    ) -> Result<(), ClientError> {
        let first: Reply<T> = self.call(&Request::Stream(s))?;
        let mut r = first;
        loop {
            if r.done {
                return Ok(());
            }
            if let Some(d) = r.data
                && !each(d)
            {
                return Ok(());
            }
            r = self.recv()?;
        }
    }

    /// Reads one reply line; an error reply is [`ClientError::Refused`].
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Reply<T>, ClientError> {
        let mut answer = String::new();
        match self.r.read_line(&mut answer) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(_) => {}
            Err(source) => return Err(ClientError::Recv { peer: self.peer.clone(), source }),
        }
        let mut r: Reply<T> = serde_json::from_str(&answer).map_err(ClientError::BadReply)?;
        if !r.ok {
            let e = r.error.take().unwrap_or_else(|| ApiError::new(ErrorCode::Internal, "unknown error"));
            return Err(ClientError::Refused(e));
        }
        Ok(r)
    }

    /// The stream back, for a protocol that goes on after the last reply (the
    /// hand-over). `None` if bytes after that reply were already read.
    pub fn into_inner(self) -> Option<S> {
        self.r.buffer().is_empty().then(|| self.r.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Show;

    /// Both ends of a connection in memory: what the client wrote, what the daemon says.
    struct Pipe {
        written: Vec<u8>,
        answer: io::Cursor<Vec<u8>>,
    }

    impl Read for Pipe {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.answer.read(b)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn client(answer: &str) -> Client<Pipe> {
        Client::new(Pipe { written: Vec::new(), answer: io::Cursor::new(answer.as_bytes().to_vec()) }, "test")
    }

    #[test]
    fn replies_are_lines_in_one_shape() {
        assert_eq!(line(&Reply::<()>::message("done")), b"{\"ok\":true,\"message\":\"done\"}\n");
        assert_eq!(line(&Reply::data(vec![1, 2])), b"{\"ok\":true,\"data\":[1,2]}\n");
        assert_eq!(line(&Reply::<()>::done()), b"{\"ok\":true,\"done\":true}\n");
        let e = error_line(ApiError::new(ErrorCode::NotFound, "no pod x"));
        assert_eq!(e, b"{\"ok\":false,\"error\":{\"code\":\"not_found\",\"message\":\"no pod x\"}}\n");
    }

    #[test]
    fn a_client_gets_data_messages_and_coded_errors() {
        let mut c = client("{\"ok\":true,\"data\":[\"a\"]}\n");
        let v: Vec<String> = c.query(Query::Show { what: Show::Routes }).unwrap();
        assert_eq!(v, ["a"]);
        assert_eq!(c.r.get_ref().written, b"{\"op\":\"show\",\"what\":\"routes\"}\n");
        let mut c = client("{\"ok\":true,\"message\":\"pod x detached\"}\n");
        assert_eq!(c.command(Command::PodDel { name: "x".into() }).unwrap(), "pod x detached");
        let mut c = client("{\"ok\":false,\"error\":{\"code\":\"no_free_address\",\"message\":\"none\"}}\n");
        match c.command(Command::PodDel { name: "x".into() }) {
            Err(ClientError::Refused(e)) => {
                assert_eq!((e.code, e.message.as_str()), (ErrorCode::NoFreeAddress, "none"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(client("").command(Command::PodDel { name: "x".into() }), Err(ClientError::Closed)));
        assert!(matches!(
            client("nope\n").command(Command::PodDel { name: "x".into() }),
            Err(ClientError::BadReply(_))
        ));
    }

    #[test]
    fn a_stream_ends_at_done() {
        let mut c = client("{\"ok\":true,\"data\":1}\n{\"ok\":true,\"data\":2}\n{\"ok\":true,\"done\":true}\n");
        let mut got = Vec::new();
        let s = Stream::TraceLive { filter: String::new(), count: 2, timeout_ms: 0 };
        c.stream(s, |n: u32| {
            got.push(n);
            true
        })
        .unwrap();
        assert_eq!(got, [1, 2]);
    }
}
