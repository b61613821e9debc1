//! Reading a list reply row by row: `{"ok":true,"data":[row,...]}` (or an error reply)
//! deserialised with a seed that hands each row of `data` to a callback as soon as it
//! is parsed, so a client never holds the whole answer.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::api::error::{ApiError, ErrorCode};

/// The reply: the number of rows, or the daemon's refusal.
pub struct ReplySeed<'a, T, F> {
    each: &'a mut F,
    _row: PhantomData<fn() -> T>,
}

impl<'a, T, F: FnMut(T)> ReplySeed<'a, T, F> {
    pub fn new(each: &'a mut F) -> Self {
        ReplySeed { each, _row: PhantomData }
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> DeserializeSeed<'de> for ReplySeed<'_, T, F> {
    type Value = Result<usize, ApiError>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> Visitor<'de> for ReplySeed<'_, T, F> {
    type Value = Result<usize, ApiError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reply object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut ok, mut error, mut rows) = (None, None, 0);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Ok => ok = Some(map.next_value::<bool>()?),
                Key::Error => error = Some(map.next_value::<ApiError>()?),
                Key::Data => rows = map.next_value_seed(RowsSeed { each: &mut *self.each, _row: PhantomData })?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (ok, error) {
            (Some(true), _) => Ok(Ok(rows)),
            (_, Some(e)) => Ok(Err(e)),
            _ => Ok(Err(ApiError::new(ErrorCode::Internal, "unknown error"))),
        }
    }
}

/// The keys of a reply this reader cares about.
enum Key {
    Ok,
    Error,
    Data,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct K;
        impl Visitor<'_> for K {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "ok" => Key::Ok,
                    "error" => Key::Error,
                    "data" => Key::Data,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(K)
    }
}

/// The `data` array: each row to the callback; how many.
struct RowsSeed<'a, T, F> {
    each: &'a mut F,
    _row: PhantomData<fn() -> T>,
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> DeserializeSeed<'de> for RowsSeed<'_, T, F> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T)> Visitor<'de> for RowsSeed<'_, T, F> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(row) = seq.next_element::<T>()? {
            (self.each)(row);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;

    fn read(text: &str) -> (Result<Vec<u32>, ApiError>, String) {
        let mut r = BufReader::new(text.as_bytes());
        let mut got = Vec::new();
        let mut each = |n: u32| got.push(n);
        let res = {
            let mut de = serde_json::Deserializer::from_reader(&mut r);
            ReplySeed::new(&mut each).deserialize(&mut de).unwrap()
        };
        let mut rest = String::new();
        r.read_line(&mut rest).unwrap();
        (res.map(|_| got), rest)
    }

    #[test]
    fn rows_come_one_by_one_and_the_line_ends_after_the_reply() {
        let (rows, rest) = read("{\"ok\":true,\"data\":[1,2,3]}\n{\"ok\":true}\n");
        assert_eq!(rows.unwrap(), [1, 2, 3]);
        assert_eq!(rest, "\n", "the next reply is left for the next read");
        assert_eq!(read("{\"ok\":true,\"data\":[]}\n").0.unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn an_error_reply_is_the_refusal() {
        let (r, _) = read("{\"ok\":false,\"error\":{\"code\":\"busy\",\"message\":\"too many\"}}\n");
        let e = r.unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::Busy, "too many"));
    }
}
