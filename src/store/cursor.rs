//! List cursors: opaque to clients, checked when they come back.
//!
//! A cursor is the URL-safe base64 of `{list}:{position}`, where `list` names the list it was
//! made for. Decoding checks the tag, so a cursor of another list, a truncated one or any
//! well-formed base64 of something else is a 400 naming `cursor`, never a silent first page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::StoreError;

/// The cursor of `position` in the list `list`.
pub fn encode(list: &str, position: &str) -> String {
    B64.encode(format!("{list}:{position}"))
}

/// The position of a cursor made by [`encode`] for `list`; `valid` checks its shape.
pub fn decode(
    list: &str,
    cursor: &str,
    valid: impl Fn(&str) -> bool,
) -> Result<String, StoreError> {
    let raw = B64.decode(cursor).map_err(|_| StoreError::BadCursor)?;
    let text = String::from_utf8(raw).map_err(|_| StoreError::BadCursor)?;
    let position = text
        .strip_prefix(list)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or(StoreError::BadCursor)?;
    if position.is_empty() || !valid(position) {
        return Err(StoreError::BadCursor);
    }
    Ok(position.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_comes_back_only_to_its_own_list() {
        let c = encode("deliveries", "0001|msg_x");
        assert_eq!(decode("deliveries", &c, |_| true).unwrap(), "0001|msg_x");
        assert!(decode("endpoints", &c, |_| true).is_err());
        assert!(decode("deliveries", "garbage!", |_| true).is_err());
        assert!(
            decode("deliveries", "YWJj", |_| true).is_err(),
            "base64 of `abc`"
        );
        assert!(decode("deliveries", &c, |p| p.contains('#')).is_err());
        assert!(decode("deliveries", &encode("deliveries", ""), |_| true).is_err());
    }
}
