//! One JSONL line → a conversation (`Vec<Message>`), in the three record shapes of DESIGN.md:
//!
//! - `{"prompt": …, "response": …}` (`completion` accepted for `response`; optional `system`)
//! - `{"instruction": …, "input": …, "output": …}`: the user turn is the instruction, plus
//!   `"\n\n" + input` when input is non-empty (`input` may be missing or null; optional `system`)
//! - `{"messages": [{"role": …, "content": …}, …]}`: loss on every assistant turn.
//!
//! Errors are plain reasons; the caller adds file and line.

use crate::tokenize::Message;
use serde_json::{Map, Value};

/// Parse one record. The result always has at least one assistant turn, and no assistant turn
/// is empty.
pub fn parse_record(line: &str) -> Result<Vec<Message>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = match v {
        Value::Object(o) => o,
        other => {
            return Err(format!(
                "record is not a JSON object (found {})",
                kind(&other)
            ))
        }
    };
    let msgs = if obj.contains_key("messages") {
        messages_shape(&obj)?
    } else if obj.contains_key("prompt") {
        let response = if obj.contains_key("response") || !obj.contains_key("completion") {
            "response"
        } else {
            "completion"
        };
        single_turn(&obj, string_field(&obj, "prompt")?.to_string(), response)?
    } else if obj.contains_key("instruction") {
        let instruction = string_field(&obj, "instruction")?;
        let input = optional_string(&obj, "input")?.unwrap_or("");
        let user = if input.is_empty() {
            instruction.to_string()
        } else {
            format!("{instruction}\n\n{input}")
        };
        single_turn(&obj, user, "output")?
    } else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown record shape: expected \"prompt\"/\"response\", \"instruction\"/\"input\"/\"output\" \
             or \"messages\" (found keys: {})",
            if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
        ));
    };
    check_conversation(&msgs)?;
    Ok(msgs)
}

/// The rules every conversation obeys before tokenization: at least one assistant turn, and
/// no empty (or whitespace-only) assistant turn.
pub fn check_conversation(msgs: &[Message]) -> Result<(), String> {
    if !msgs.iter().any(|m| m.role == "assistant") {
        return Err("no assistant turn".into());
    }
    for (i, m) in msgs.iter().enumerate() {
        if m.role == "assistant" && m.content.trim().is_empty() {
            return Err(format!("empty response (messages[{i}])"));
        }
    }
    Ok(())
}

fn single_turn(
    obj: &Map<String, Value>,
    user: String,
    response_key: &str,
) -> Result<Vec<Message>, String> {
    let response = string_field(obj, response_key)?;
    if response.trim().is_empty() {
        return Err(format!("empty response (field '{response_key}')"));
    }
    let mut msgs = Vec::with_capacity(3);
    if let Some(system) = optional_string(obj, "system")? {
        msgs.push(Message::new("system", system));
    }
    msgs.push(Message::new("user", user));
    msgs.push(Message::new("assistant", response));
    Ok(msgs)
}

fn messages_shape(obj: &Map<String, Value>) -> Result<Vec<Message>, String> {
    let list = match &obj["messages"] {
        Value::Array(a) => a,
        other => {
            return Err(format!(
                "field 'messages' is not an array (found {})",
                kind(other)
            ))
        }
    };
    if list.is_empty() {
        return Err("field 'messages' is empty".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let m = match m {
                Value::Object(o) => o,
                other => return Err(format!("messages[{i}] is not an object (found {})", kind(other))),
            };
            let role = string_field(m, "role").map_err(|e| format!("messages[{i}]: {e}"))?;
            if !matches!(role, "system" | "user" | "assistant" | "tool") {
                return Err(format!(
                    "messages[{i}]: unknown role '{role}' (expected system, user, assistant or tool)"
                ));
            }
            let content = string_field(m, "content").map_err(|e| format!("messages[{i}]: {e}"))?;
            Ok(Message::new(role, content))
        })
        .collect()
}

fn string_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match obj.get(key) {
        None => Err(format!("missing field '{key}'")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "field '{key}' is not a string (found {})",
            kind(other)
        )),
    }
}

fn optional_string<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "field '{key}' is not a string (found {})",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(m: &[Message]) -> Vec<&str> {
        m.iter().map(|m| m.role.as_str()).collect()
    }

    #[test]
    fn three_shapes() {
        let a = parse_record(r#"{"prompt":"p","response":"r"}"#).unwrap();
        assert_eq!(
            a,
            vec![Message::new("user", "p"), Message::new("assistant", "r")]
        );
        let b = parse_record(r#"{"prompt":"p","completion":"c","system":"s"}"#).unwrap();
        assert_eq!(roles(&b), ["system", "user", "assistant"]);
        assert_eq!(b[2].content, "c");
        let c = parse_record(r#"{"instruction":"Do","input":"this","output":"ok"}"#).unwrap();
        assert_eq!(c[0].content, "Do\n\nthis");
        let d = parse_record(r#"{"instruction":"Do","input":"","output":"ok"}"#).unwrap();
        assert_eq!(d[0].content, "Do");
        let e = parse_record(r#"{"instruction":"Do","output":"ok"}"#).unwrap();
        assert_eq!(e[0].content, "Do");
        let f = parse_record(
            r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"},{"role":"assistant","content":"d"}]}"#,
        )
        .unwrap();
        assert_eq!(roles(&f), ["user", "assistant", "user", "assistant"]);
    }

    #[test]
    fn reasons() {
        let err = |s: &str| parse_record(s).unwrap_err();
        assert!(err("{not json").starts_with("invalid JSON"));
        assert!(err("[1,2]").contains("not a JSON object"));
        assert_eq!(err(r#"{"prompt":"p"}"#), "missing field 'response'");
        assert!(err(r#"{"prompt":1,"response":"r"}"#).contains("field 'prompt' is not a string"));
        assert!(err(r#"{"prompt":"p","response":"  "}"#).starts_with("empty response"));
        assert!(err(r#"{"text":"x"}"#).starts_with("unknown record shape"));
        assert!(err(r#"{"instruction":"i","input":3,"output":"o"}"#)
            .contains("'input' is not a string"));
        assert_eq!(
            err(r#"{"messages":[{"role":"user","content":"a"}]}"#),
            "no assistant turn"
        );
        assert!(err(r#"{"messages":[{"role":"user"}]}"#)
            .contains("messages[0]: missing field 'content'"));
        assert!(err(r#"{"messages":[{"role":"bot","content":"a"}]}"#).contains("unknown role"));
        assert!(err(r#"{"messages":"hi"}"#).contains("not an array"));
        assert!(err(
            r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":""}]}"#
        )
        .starts_with("empty response (messages[1])"));
    }
}
