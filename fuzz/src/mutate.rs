//! Mutators: bytes (with a protobuf wire-format view, so a mutation can hit
//! a field's varint or length instead of only random bits) and text (tokens,
//! numbers, lines).

use crate::rng::Rng;

/// Integers that sit on edges: zero, signs, byte and word limits.
pub const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    16,
    127,
    128,
    255,
    256,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

/// The wire-format parts of a protobuf message that mutations aim at.
#[derive(Debug, Default)]
struct Wire {
    /// Byte ranges of varint values (field values, not tags).
    varints: Vec<(usize, usize)>,
    /// Byte ranges of length prefixes.
    lengths: Vec<(usize, usize)>,
    /// Byte ranges of whole fields (tag to end of value).
    fields: Vec<(usize, usize)>,
}

fn varint(buf: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(pos)?;
        pos += 1;
        if shift < 64 {
            v |= u64::from(b & 0x7f) << shift;
        }
        if b & 0x80 == 0 {
            return Some((v, pos));
        }
    }
    None
}

/// Scans `buf[start..end]` as a message; on success records its parts (and
/// those of nested messages) and returns true.
fn scan(buf: &[u8], start: usize, end: usize, depth: usize, out: &mut Wire) -> bool {
    let mut pos = start;
    let mut found = Wire::default();
    while pos < end {
        let Some((tag, after_tag)) = varint(&buf[..end], pos) else { return false };
        if tag >> 3 == 0 {
            return false;
        }
        let next = match tag & 7 {
            0 => {
                let Some((_, p)) = varint(&buf[..end], after_tag) else { return false };
                found.varints.push((after_tag, p));
                p
            }
            1 => after_tag + 8,
            5 => after_tag + 4,
            2 => {
                let Some((len, p)) = varint(&buf[..end], after_tag) else { return false };
                let Some(stop) = p.checked_add(len as usize).filter(|&s| s <= end) else { return false };
                found.lengths.push((after_tag, p));
                if depth < 8 && len > 0 {
                    let mut inner = Wire::default();
                    if scan(buf, p, stop, depth + 1, &mut inner) {
                        found.varints.extend(inner.varints);
                        found.lengths.extend(inner.lengths);
                        found.fields.extend(inner.fields);
                    }
                }
                stop
            }
            _ => return false,
        };
        if next > end {
            return false;
        }
        found.fields.push((pos, next));
        pos = next;
    }
    out.varints.extend(found.varints);
    out.lengths.extend(found.lengths);
    out.fields.extend(found.fields);
    true
}

fn encode_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// One to four stacked mutations of `data`; `others` are splice partners.
pub fn bytes(rng: &mut Rng, data: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = data.to_vec();
    let n = 1 + rng.below(4);
    for _ in 0..n {
        mutate_bytes_once(rng, &mut out, others);
    }
    out
}

fn mutate_bytes_once(rng: &mut Rng, out: &mut Vec<u8>, others: &[Vec<u8>]) {
    // The structured mutations need the wire view of the current bytes.
    let structured = rng.below(10) < 6;
    if structured && !out.is_empty() {
        let mut w = Wire::default();
        scan(out, 0, out.len(), 0, &mut w);
        match rng.below(4) {
            0 if !w.varints.is_empty() => {
                let (s, e) = *rng.pick(&w.varints);
                let v = *rng.pick(INTERESTING);
                let v = if rng.one_in(4) { v.wrapping_neg() } else { v };
                out.splice(s..e, encode_varint(v));
                return;
            }
            1 if !w.lengths.is_empty() => {
                let (s, e) = *rng.pick(&w.lengths);
                let old = varint(out, s).map_or(0, |(v, _)| v);
                let new = match rng.below(4) {
                    0 => old.saturating_add(1 + rng.below(16) as u64),
                    1 => old.saturating_sub(1 + rng.below(16) as u64),
                    2 => 0,
                    _ => *rng.pick(INTERESTING),
                };
                out.splice(s..e, encode_varint(new));
                return;
            }
            2 if !w.fields.is_empty() => {
                let (s, e) = *rng.pick(&w.fields);
                if rng.one_in(2) {
                    out.drain(s..e);
                } else {
                    let copy = out[s..e].to_vec();
                    let at = rng.pick(&w.fields).1;
                    out.splice(at..at, copy);
                }
                return;
            }
            3 if !w.fields.is_empty() && !others.is_empty() => {
                // A field of another model in place of one of this one.
                let other = rng.pick(others);
                let mut ow = Wire::default();
                scan(other, 0, other.len(), 0, &mut ow);
                if !ow.fields.is_empty() {
                    let (os, oe) = *rng.pick(&ow.fields);
                    let (s, e) = *rng.pick(&w.fields);
                    out.splice(s..e, other[os..oe].to_vec());
                    return;
                }
            }
            _ => {}
        }
    }
    match rng.below(6) {
        0 if !out.is_empty() => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
        }
        1 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 0x01, 0x08, 0x0a, 0x12]);
        }
        2 => {
            let at = rng.below(out.len() + 1);
            out.truncate(at);
        }
        3 if !others.is_empty() => {
            let other = rng.pick(others);
            let a = rng.below(out.len() + 1);
            let b = rng.below(other.len() + 1);
            out.truncate(a);
            out.extend_from_slice(&other[b..]);
        }
        4 => {
            let at = rng.below(out.len() + 1);
            let k = 1 + rng.below(16);
            let junk: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
            out.splice(at..at, junk);
        }
        _ if out.len() > 1 => {
            let a = rng.below(out.len());
            let b = (a + 1 + rng.below(64)).min(out.len());
            out.drain(a..b);
        }
        _ => out.push(rng.next_u64() as u8),
    }
}

/// Numbers worth writing into text: edges of integer types, float
/// specials, forms a number parser may trip on.
pub const TEXT_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "3",
    "-7",
    "255",
    "65536",
    "2147483647",
    "-2147483648",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e9",
    "1e308",
    "1e999",
    "-1e999",
    "1e-45",
    "0.5",
    "NaN",
    "nan",
    "inf",
    "-inf",
    ".5",
    "5.",
    "0x10",
    "1_000",
    "+3",
];

/// One to three stacked text mutations; `tokens` is the target's own
/// vocabulary (punctuation, keywords), `others` are splice partners.
pub fn text(rng: &mut Rng, s: &str, tokens: &[&str], others: &[String]) -> String {
    let mut out = s.to_string();
    for _ in 0..1 + rng.below(3) {
        out = text_once(rng, &out, tokens, others);
    }
    out
}

/// Byte offsets of char boundaries of `s` (including its end).
fn boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

fn text_once(rng: &mut Rng, s: &str, tokens: &[&str], others: &[String]) -> String {
    let b = boundaries(s);
    let at = |rng: &mut Rng| *rng.pick(&b);
    match rng.below(9) {
        0 => {
            // Insert a token.
            let i = at(rng);
            format!("{}{}{}", &s[..i], rng.pick(tokens), &s[i..])
        }
        1 => {
            // Delete a short range.
            let i = rng.below(b.len());
            let j = (i + 1 + rng.below(8)).min(b.len() - 1);
            format!("{}{}", &s[..b[i]], &s[b[j]..])
        }
        2 => {
            // Replace a number with an edge number.
            let nums: Vec<(usize, usize)> = number_spans(s);
            if nums.is_empty() {
                return format!("{s}{}", rng.pick(TEXT_NUMBERS));
            }
            let (x, y) = *rng.pick(&nums);
            format!("{}{}{}", &s[..x], rng.pick(TEXT_NUMBERS), &s[y..])
        }
        3 | 4 => {
            // Lines: duplicate, delete, swap, or take one from another text.
            let mut lines: Vec<&str> = s.lines().collect();
            if lines.is_empty() {
                return s.to_string();
            }
            let i = rng.below(lines.len());
            match rng.below(4) {
                0 => lines.insert(i, lines[i]),
                1 => {
                    lines.remove(i);
                }
                2 => {
                    let j = rng.below(lines.len());
                    lines.swap(i, j);
                }
                _ => {
                    if let Some(other) = (!others.is_empty()).then(|| rng.pick(others)) {
                        let ol: Vec<&str> = other.lines().collect();
                        if !ol.is_empty() {
                            lines.insert(i, ol[rng.below(ol.len())]);
                        }
                    }
                }
            }
            let mut t = lines.join("\n");
            t.push('\n');
            t
        }
        5 => {
            // Duplicate a range somewhere else.
            let i = rng.below(b.len());
            let j = (i + rng.below(32)).min(b.len() - 1);
            let k = at(rng);
            let piece = s[b[i]..b[j]].to_string();
            format!("{}{piece}{}", &s[..k], &s[k..])
        }
        6 => {
            // Replace one char with a token.
            let i = rng.below(b.len().saturating_sub(1).max(1));
            let j = (i + 1).min(b.len() - 1);
            format!("{}{}{}", &s[..b[i]], rng.pick(tokens), &s[b[j]..])
        }
        7 => {
            // Truncate.
            s[..at(rng)].to_string()
        }
        _ => {
            // Splice with another text.
            match (!others.is_empty()).then(|| rng.pick(others)) {
                Some(o) => {
                    let ob = boundaries(o);
                    format!("{}{}", &s[..at(rng)], &o[*rng.pick(&ob)..])
                }
                None => s.to_string(),
            }
        }
    }
}

/// Byte ranges of decimal numbers (digits, with a sign, dot or exponent).
fn number_spans(s: &str) -> Vec<(usize, usize)> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = if i > 0 && bytes[i - 1] == b'-' { i - 1 } else { i };
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_digit() || matches!(bytes[j], b'.' | b'e' | b'E')) {
                j += 1;
            }
            out.push((start, j));
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_view_finds_varints_lengths_and_nested_fields() {
        // field 1 varint 150; field 2 bytes { field 1 varint 1 }
        let msg = [0x08, 0x96, 0x01, 0x12, 0x02, 0x08, 0x01];
        let mut w = Wire::default();
        assert!(scan(&msg, 0, msg.len(), 0, &mut w));
        assert_eq!(w.varints, vec![(1, 3), (6, 7)]);
        assert_eq!(w.lengths, vec![(4, 5)]);
        assert_eq!(w.fields.len(), 3);
        assert_eq!(varint(&encode_varint(u64::MAX), 0), Some((u64::MAX, 10)));
    }

    #[test]
    fn text_mutations_keep_utf8_and_change_something() {
        let mut rng = Rng::new(3);
        let seed = "graph g {\n  input %x: f32[1,2]\n  output %x\n}\n é";
        let changed = (0..200).filter(|_| text(&mut rng, seed, &["%", "{"], &[]) != seed).count();
        assert!(changed > 150, "{changed}");
    }
}
