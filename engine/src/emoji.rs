//! What a reaction may be: one emoji, in one canonical spelling.
//!
//! Pure (no I/O). An emoji is a sequence of elements joined by ZWJ
//! (U+200D), each element one of:
//! - a pictograph (from the ranges below, which hold emoji and no letters,
//!   digits, spaces, marks or controls), optionally followed by VS16
//!   (U+FE0F) or by one skin-tone modifier (U+1F3FB–1F3FF);
//! - a keycap: `0`–`9`, `#` or `*`, optionally VS16, then U+20E3;
//! - a flag: two regional indicators, or U+1F3F4 followed by tag
//!   characters (U+E0020–E007E) and the cancel tag U+E007F.
//!
//! Invariant: [`canonical`] accepts nothing else, and gives every accepted
//! spelling of one emoji the same string (VS16 after every pictograph that
//! has no skin tone, and in every keycap; VS15, text presentation, is
//! refused), so "❤" and "❤️" are one reaction, not two that look alike.

/// Elements one emoji may join (a family of four with skin tones has 7
/// code points in 4 elements).
const ELEMENTS_MAX: usize = 8;
const ZWJ: char = '\u{200D}';
const VS16: char = '\u{FE0F}';
const KEYCAP: char = '\u{20E3}';

/// Whether `c` is a pictograph an element may start with.
fn pictograph(c: char) -> bool {
    matches!(c as u32,
        0xA9 | 0xAE | 0x203C | 0x2049 | 0x2122 | 0x2139
        | 0x2194..=0x2199 | 0x21A9..=0x21AA | 0x231A..=0x231B | 0x2328 | 0x23CF
        | 0x23E9..=0x23F3 | 0x23F8..=0x23FA | 0x24C2 | 0x25AA..=0x25AB | 0x25B6 | 0x25C0
        | 0x25FB..=0x25FE | 0x2600..=0x2775 | 0x2794..=0x27BF | 0x2934..=0x2935
        | 0x2B05..=0x2B07 | 0x2B1B..=0x2B1C | 0x2B50 | 0x2B55 | 0x3030 | 0x303D | 0x3297
        | 0x3299 | 0x1F004 | 0x1F0CF | 0x1F170..=0x1F171 | 0x1F17E..=0x1F17F | 0x1F18E
        | 0x1F191..=0x1F19A | 0x1F201..=0x1F202 | 0x1F21A | 0x1F22F | 0x1F232..=0x1F23A
        | 0x1F250..=0x1F251 | 0x1F300..=0x1F3FA | 0x1F400..=0x1F64F | 0x1F680..=0x1F6FF
        | 0x1F7E0..=0x1F7EB | 0x1F7F0 | 0x1F90C..=0x1F9FF | 0x1FA70..=0x1FAFF)
}

fn skin_tone(c: char) -> bool {
    matches!(c as u32, 0x1F3FB..=0x1F3FF)
}

fn regional(c: char) -> bool {
    matches!(c as u32, 0x1F1E6..=0x1F1FF)
}

fn tag(c: char) -> bool {
    matches!(c as u32, 0xE0020..=0xE007E)
}

/// The canonical spelling of `s` when it is one emoji; `None` otherwise.
pub fn canonical(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    let mut elements = 0;
    loop {
        i = element(&chars, i, &mut out)?;
        elements += 1;
        if elements > ELEMENTS_MAX {
            return None;
        }
        match chars.get(i) {
            None => return Some(out),
            Some(&ZWJ) => {
                out.push(ZWJ);
                i += 1;
            }
            Some(_) => return None,
        }
    }
}

/// Reads one element at `i` into `out`; the index after it.
fn element(chars: &[char], mut i: usize, out: &mut String) -> Option<usize> {
    let c = *chars.get(i)?;
    i += 1;
    if matches!(c, '0'..='9' | '#' | '*') {
        if chars.get(i) == Some(&VS16) {
            i += 1;
        }
        if chars.get(i) != Some(&KEYCAP) {
            return None;
        }
        out.extend([c, VS16, KEYCAP]);
        return Some(i + 1);
    }
    if regional(c) {
        let second = *chars.get(i).filter(|&&r| regional(r))?;
        out.extend([c, second]);
        return Some(i + 1);
    }
    if c == '\u{1F3F4}' && chars.get(i).is_some_and(|&t| tag(t)) {
        out.push(c);
        while chars.get(i).is_some_and(|&t| tag(t)) {
            out.push(chars[i]);
            i += 1;
        }
        if chars.get(i) != Some(&'\u{E007F}') {
            return None;
        }
        out.push('\u{E007F}');
        return Some(i + 1);
    }
    if !pictograph(c) {
        return None;
    }
    out.push(c);
    match chars.get(i) {
        Some(&t) if skin_tone(t) => {
            out.push(t);
            Some(i + 1)
        }
        Some(&VS16) => {
            out.push(VS16);
            Some(i + 1)
        }
        _ => {
            out.push(VS16);
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn common_emoji_are_accepted_in_one_spelling() {
        for (given, want) in [
            ("👍", "👍\u{FE0F}"),
            ("👍\u{FE0F}", "👍\u{FE0F}"),
            ("❤", "❤\u{FE0F}"),
            ("❤️", "❤\u{FE0F}"),
            ("👍🏽", "👍🏽"),
            ("🇫🇷", "🇫🇷"),
            ("1️⃣", "1\u{FE0F}\u{20E3}"),
            ("1⃣", "1\u{FE0F}\u{20E3}"),
            ("#️⃣", "#\u{FE0F}\u{20E3}"),
            ("🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"),
            (
                "👨‍👩‍👧‍👦",
                "👨\u{FE0F}\u{200D}👩\u{FE0F}\u{200D}👧\u{FE0F}\u{200D}👦\u{FE0F}",
            ),
            ("🏳️‍🌈", "🏳\u{FE0F}\u{200D}🌈\u{FE0F}"),
            ("🧑🏽‍💻", "🧑🏽\u{200D}💻\u{FE0F}"),
            ("🅰", "🅰\u{FE0F}"),
            ("⭐", "⭐\u{FE0F}"),
            ("🫠", "🫠\u{FE0F}"),
        ] {
            assert_eq!(canonical(given).as_deref(), Some(want), "{given:?}");
            assert_eq!(
                canonical(want).as_deref(),
                Some(want),
                "{want:?} is canonical"
            );
        }
    }

    #[test]
    fn text_marks_and_look_alikes_are_refused() {
        for bad in [
            "",
            "lol",
            "a",
            "1",
            "ばか",
            "ⓢ",
            "Ⅻ",
            "❶",
            "🄰",
            "\u{2066}",
            "\u{202E}👍",
            "\u{3000}",
            "\u{2800}",
            "\u{3164}",
            "\u{20D0}",
            " 👍",
            "👍 ",
            "👍👍",
            "👍👎😂",
            "🇫",
            "🇫🇷🇫",
            "\u{200D}👍",
            "👍\u{200D}",
            "👍\u{200D}\u{200D}👍",
            "👍\u{FE0E}",
            "👍\u{FE0F}\u{FE0F}",
            "🏽",
            "👍🏽🏽",
            "\u{E0067}",
            "👍\u{E0067}\u{E007F}",
            "🏴\u{E0067}",
            "\u{20E3}",
            "1\u{FE0F}",
            "👨‍👩‍👧‍👦‍👨‍👩‍👧‍👦‍👍",
        ] {
            assert_eq!(canonical(bad), None, "{bad:?}");
        }
    }
}
