//! AMF0 decoding (Adobe "Action Message Format -- AMF 0" spec, section 2),
//! limited to the value types that RTMP commands use. Markers for types a
//! client has no reason to put in a command (movie clip, reference, XML,
//! typed object, AMF3 switch, ...) are rejected rather than guessed at.

/// Nesting depth of objects and arrays; commands use 1 or 2.
pub const MAX_DEPTH: usize = 16;
/// Values (counting nested ones) decoded from one `Decoder`, bounding the
/// memory a small message can make us spend on `Value` trees.
pub const MAX_VALUES: usize = 1024;

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0a;
const DATE: u8 = 0x0b;
const LONG_STRING: u8 = 0x0c;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    /// Anonymous object or ECMA array: both are ordered key/value lists on
    /// the wire, and nothing here needs to tell them apart.
    Object(Vec<(String, Value)>),
    Null,
    Undefined,
    StrictArray(Vec<Value>),
    /// Milliseconds since the epoch; the time zone field is ignored (spec 2.13).
    Date(f64),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// First property named `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Self::Object(props) => props.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amf0Error {
    Truncated,
    UnknownMarker(u8),
    /// Object end marker where a value was expected.
    UnexpectedObjectEnd,
    TooDeep,
    TooManyValues,
    BadUtf8,
}

/// Reads consecutive AMF0 values from a message body.
pub struct Decoder<'a> {
    rest: &'a [u8],
    values_left: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            values_left: MAX_VALUES,
        }
    }

    /// The next value, or `None` at the end of the input.
    pub fn next_value(&mut self) -> Result<Option<Value>, Amf0Error> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        self.value(0).map(Some)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Amf0Error> {
        let (head, rest) = self.rest.split_at_checked(n).ok_or(Amf0Error::Truncated)?;
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Amf0Error> {
        self.take(N)?.try_into().map_err(|_| Amf0Error::Truncated)
    }

    fn f64(&mut self) -> Result<f64, Amf0Error> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Amf0Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// UTF-8 string of `len` bytes. Invalid UTF-8 is an error rather than
    /// replaced, so two different stream keys can never decode the same.
    fn utf8(&mut self, len: usize) -> Result<String, Amf0Error> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Amf0Error::BadUtf8)
    }

    fn short_string(&mut self) -> Result<String, Amf0Error> {
        let len = u16::from_be_bytes(self.array()?);
        self.utf8(usize::from(len))
    }

    fn value(&mut self, depth: usize) -> Result<Value, Amf0Error> {
        if depth > MAX_DEPTH {
            return Err(Amf0Error::TooDeep);
        }
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or(Amf0Error::TooManyValues)?;
        let [marker] = self.array()?;
        Ok(match marker {
            NUMBER => Value::Number(self.f64()?),
            BOOLEAN => Value::Boolean(self.array::<1>()? != [0]),
            STRING => Value::String(self.short_string()?),
            LONG_STRING => {
                let len = self.u32()?;
                Value::String(self.utf8(usize::try_from(len).map_err(|_| Amf0Error::Truncated)?)?)
            }
            OBJECT => Value::Object(self.properties(depth)?),
            ECMA_ARRAY => {
                // The count is only a hint (spec 2.10); the end marker decides.
                self.u32()?;
                Value::Object(self.properties(depth)?)
            }
            STRICT_ARRAY => {
                let count = self.u32()?;
                // Don't trust the count for allocation: grow as values decode;
                // each takes at least a byte, so a count past the input is a lie.
                if usize::try_from(count).map_or(true, |c| c > self.rest.len()) {
                    return Err(Amf0Error::Truncated);
                }
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.value(depth.saturating_add(1))?);
                }
                Value::StrictArray(items)
            }
            NULL => Value::Null,
            UNDEFINED => Value::Undefined,
            DATE => {
                let ms = self.f64()?;
                self.take(2)?;
                Value::Date(ms)
            }
            OBJECT_END => return Err(Amf0Error::UnexpectedObjectEnd),
            other => return Err(Amf0Error::UnknownMarker(other)),
        })
    }

    /// Object properties up to and including the empty-key + object-end
    /// marker (spec 2.5).
    fn properties(&mut self, depth: usize) -> Result<Vec<(String, Value)>, Amf0Error> {
        let mut props = Vec::new();
        loop {
            let key = self.short_string()?;
            if key.is_empty() && self.rest.first() == Some(&OBJECT_END) {
                self.take(1)?;
                return Ok(props);
            }
            let value = self.value(depth.saturating_add(1))?;
            props.push((key, value));
        }
    }
}

/// Appends `values` in AMF0, as the proxy's own answers need them.
/// Strings longer than 65535 bytes go out as long strings; a `Date`
/// carries time zone 0. Object keys longer than 65535 bytes are cut (the
/// proxy writes only its own, short keys).
pub fn encode(values: &[Value], out: &mut Vec<u8>) {
    for v in values {
        encode_value(v, out);
    }
}

fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Number(n) => {
            out.push(NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Boolean(b) => out.extend_from_slice(&[BOOLEAN, u8::from(*b)]),
        Value::String(s) => match u16::try_from(s.len()) {
            Ok(len) => {
                out.push(STRING);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Err(_) => {
                out.push(LONG_STRING);
                let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(s.as_bytes().get(..len as usize).unwrap_or_default());
            }
        },
        Value::Object(props) => {
            out.push(OBJECT);
            for (k, v) in props {
                let key = k
                    .as_bytes()
                    .get(..usize::from(u16::MAX))
                    .unwrap_or(k.as_bytes());
                let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(key);
                encode_value(v, out);
            }
            out.extend_from_slice(&[0, 0, OBJECT_END]);
        }
        Value::Null => out.push(NULL),
        Value::Undefined => out.push(UNDEFINED),
        Value::StrictArray(items) => {
            out.push(STRICT_ARRAY);
            let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&count.to_be_bytes());
            for item in items.iter().take(count as usize) {
                encode_value(item, out);
            }
        }
        Value::Date(ms) => {
            out.push(DATE);
            out.extend_from_slice(&ms.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
    }
}

/// A minimal encoder for building test messages.
#[cfg(test)]
pub(crate) mod enc {
    pub fn string(s: &str) -> Vec<u8> {
        let mut v = vec![super::STRING];
        v.extend((s.len() as u16).to_be_bytes());
        v.extend(s.as_bytes());
        v
    }

    pub fn number(n: f64) -> Vec<u8> {
        let mut v = vec![super::NUMBER];
        v.extend(n.to_be_bytes());
        v
    }

    pub fn null() -> Vec<u8> {
        vec![super::NULL]
    }

    /// Anonymous object of string properties.
    pub fn object(props: &[(&str, &str)]) -> Vec<u8> {
        let mut v = vec![super::OBJECT];
        for (k, val) in props {
            v.extend((k.len() as u16).to_be_bytes());
            v.extend(k.as_bytes());
            v.extend(string(val));
        }
        v.extend([0, 0, super::OBJECT_END]);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Result<Vec<Value>, Amf0Error> {
        let mut d = Decoder::new(bytes);
        let mut out = Vec::new();
        while let Some(v) = d.next_value()? {
            out.push(v);
        }
        Ok(out)
    }

    #[test]
    fn scalars() {
        let mut b = enc::number(1.5);
        b.extend([BOOLEAN, 1, BOOLEAN, 0, NULL, UNDEFINED]);
        b.extend(enc::string("héllo"));
        b.extend([LONG_STRING, 0, 0, 0, 2, b'h', b'i']);
        b.push(DATE);
        b.extend(2.0f64.to_be_bytes());
        b.extend([0, 0]);
        assert_eq!(
            all(&b),
            Ok(vec![
                Value::Number(1.5),
                Value::Boolean(true),
                Value::Boolean(false),
                Value::Null,
                Value::Undefined,
                Value::String("héllo".into()),
                Value::String("hi".into()),
                Value::Date(2.0),
            ])
        );
    }

    #[test]
    fn containers() {
        let obj = enc::object(&[("app", "live"), ("tcUrl", "rtmp://h/live")]);
        let v = all(&obj).unwrap();
        assert_eq!(v[0].get("app").and_then(Value::as_str), Some("live"));
        assert_eq!(v[0].get("nope"), None);

        let mut ecma = vec![ECMA_ARRAY, 0xff, 0xff, 0xff, 0xff];
        ecma.extend(&obj[1..]);
        assert_eq!(all(&ecma), all(&obj));

        let mut arr = vec![STRICT_ARRAY, 0, 0, 0, 2];
        arr.extend(enc::null());
        arr.extend(&obj);
        assert_eq!(
            all(&arr),
            Ok(vec![Value::StrictArray(vec![Value::Null, v[0].clone()])])
        );
    }

    #[test]
    fn empty_key_property_is_not_the_end() {
        let b = [OBJECT, 0, 0, NULL, 0, 0, OBJECT_END];
        assert_eq!(
            all(&b),
            Ok(vec![Value::Object(vec![(String::new(), Value::Null)])])
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(all(&[0x07, 0, 1]), Err(Amf0Error::UnknownMarker(7)));
        assert_eq!(all(&[0x11]), Err(Amf0Error::UnknownMarker(0x11)));
        assert_eq!(all(&[OBJECT_END]), Err(Amf0Error::UnexpectedObjectEnd));
        assert_eq!(all(&[NUMBER, 0, 0]), Err(Amf0Error::Truncated));
        assert_eq!(all(&[STRING, 0, 5, b'a']), Err(Amf0Error::Truncated));
        assert_eq!(
            all(&[LONG_STRING, 0xff, 0xff, 0xff, 0xff]),
            Err(Amf0Error::Truncated)
        );
        assert_eq!(all(&[STRING, 0, 1, 0xff]), Err(Amf0Error::BadUtf8));
        assert_eq!(all(&[OBJECT, 0, 1, b'a', NULL]), Err(Amf0Error::Truncated));
        // A huge element count must fail fast, not allocate or loop.
        assert_eq!(
            all(&[STRICT_ARRAY, 0xff, 0xff, 0xff, 0xff, NULL]),
            Err(Amf0Error::Truncated)
        );
    }

    #[test]
    fn bounds() {
        let deep: Vec<u8> = std::iter::repeat_n([STRICT_ARRAY, 0, 0, 0, 1], 40)
            .flatten()
            .chain([NULL])
            .collect();
        assert_eq!(all(&deep), Err(Amf0Error::TooDeep));
        let ok_depth: Vec<u8> = std::iter::repeat_n([STRICT_ARRAY, 0, 0, 0, 1], MAX_DEPTH)
            .flatten()
            .chain([NULL])
            .collect();
        assert!(all(&ok_depth).is_ok());
        let mut wide = vec![STRICT_ARRAY, 0, 0, 0x10, 0];
        wide.extend([NULL; 4096]);
        assert_eq!(all(&wide), Err(Amf0Error::TooManyValues));
    }
}
