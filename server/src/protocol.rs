//! The client frames of the WebSocket protocol, typed: one pass of
//! serde over the text, fields borrowed from it, no intermediate value.
//!
//! Every frame is a JSON object with a `type`; a field of the wrong type
//! (`"room": "7"`, `"since": -5`) refuses the frame with `bad_request`, as
//! the HTTP API does, never a silent default. Unknown fields are ignored.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The fields any client frame may carry (each type reads the ones it
/// needs; see docs/api.md).
#[derive(Debug, Default, Deserialize)]
pub struct ClientFrame<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "cow")]
    pub kind: Option<Cow<'a, str>>,
    /// Echoed, as given, on the reply.
    #[serde(rename = "ref", borrow)]
    pub r#ref: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub token: Option<Cow<'a, str>>,
    pub room: Option<u64>,
    pub since: Option<u64>,
    pub seq: Option<u64>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub body: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub client_id: Option<Cow<'a, str>>,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: Option<u64>,
}

/// An optional string, borrowed from the frame when it has no escapes
/// (serde's own `Option<Cow<str>>` always copies).
fn cow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Str;
    impl<'de> serde::de::Visitor<'de> for Str {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    struct Opt;
    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Str).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

/// Why a frame was refused: its error code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<ClientFrame<'_>, Refused> {
    // serde would also take an array for a struct.
    if !text.trim_start().starts_with('{') {
        return Err(Refused {
            code: "bad_json",
            message: "a frame must be a JSON object".into(),
        });
    }
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Refused {
            code: "bad_request",
            message: field_message(&e),
        },
        _ => Refused {
            code: "bad_json",
            message: "a frame must be a JSON object".into(),
        },
    })
}

/// serde's message without its position ("invalid type: string \"7\",
/// expected u64").
fn field_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(at) => s[..at].to_string(),
        None => s,
    }
}

impl<'a> ClientFrame<'a> {
    /// The frame's type ("" when it has none).
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("")
    }

    /// A required number.
    pub fn need(field: Option<u64>, name: &str) -> Result<u64, String> {
        field.ok_or_else(|| format!("{name} (a number) is required"))
    }

    /// A required string.
    pub fn need_str<'s>(field: &'s Option<Cow<'a, str>>, name: &str) -> Result<&'s str, String> {
        field
            .as_deref()
            .ok_or_else(|| format!("{name} (a string) is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_borrowed_fields() {
        let f = parse(r#"{"type":"send","room":7,"body":"hi","client_id":"c1","ref":{"a":[1]}}"#)
            .unwrap();
        assert_eq!((f.kind(), f.room), ("send", Some(7)));
        assert!(matches!(f.body, Some(Cow::Borrowed("hi"))));
        assert_eq!(f.r#ref.unwrap().get(), r#"{"a":[1]}"#);
        let f = parse(r#"{"type":"send","body":"a\"b","x":[1,2]}"#).unwrap();
        assert_eq!(f.body.as_deref(), Some("a\"b"), "escapes are decoded");
        assert_eq!(parse(r#"{"room":null}"#).unwrap().kind(), "");
    }

    #[test]
    fn wrong_types_are_bad_requests_and_non_objects_bad_json() {
        for text in [
            r#"{"type":"join","room":"7"}"#,
            r#"{"type":"join","room":7,"since":-5}"#,
            r#"{"type":"join","room":7,"since":"0"}"#,
            r#"{"type":"history","room":7,"limit":"abc"}"#,
            r#"{"type":"history","room":7,"after":-1}"#,
            r#"{"type":"send","room":7,"body":5}"#,
            r#"{"type":"send","room":7,"client_id":12}"#,
            r#"{"type":7}"#,
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code, "bad_request", "{text}: {e:?}");
            assert!(!e.message.contains(" line "), "{}", e.message);
        }
        for text in ["[1,2]", "\"x\"", "{", "", "nul", "{\"type\":\"send\",}"] {
            assert_eq!(parse(text).unwrap_err().code, "bad_json", "{text}");
        }
    }
}
