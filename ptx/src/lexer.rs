//! Tokenizer for PTX text.

/// Kind of a token. Words cover identifiers, directives (`.reg`), dotted
/// opcodes (`ld.global.u32`), registers (`%r1`, `%tid.x`) and numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok<'a> {
    Word(&'a str),
    Str(&'a str),
    Punct(char),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Token<'a> {
    pub(crate) tok: Tok<'a>,
    pub(crate) line: u32,
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

/// Splits `src` into tokens, dropping comments and whitespace.
pub(crate) fn lex(src: &str) -> Vec<Token<'_>> {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(src.len() / 4);
    let mut i = 0;
    let mut line = 1u32;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            i = (i + 2).min(b.len());
        } else if c == b'"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            let end = i.min(b.len());
            out.push(Token {
                tok: Tok::Str(&src[start..end]),
                line,
            });
            i = (i + 1).min(b.len());
        } else if is_word_char(c) {
            let start = i;
            loop {
                while i < b.len() && is_word_char(b[i]) {
                    i += 1;
                }
                // `::` inside a word is a qualifier (`.shared::cluster`,
                // `mbarrier::complete_tx::bytes`): part of the word.
                if b.get(i) == Some(&b':')
                    && b.get(i + 1) == Some(&b':')
                    && b.get(i + 2).is_some_and(|&c| is_word_char(c))
                {
                    i += 2;
                } else {
                    break;
                }
            }
            out.push(Token {
                tok: Tok::Word(&src[start..i]),
                line,
            });
        } else {
            // Multi-byte UTF-8 in odd places (debug sections): keep char boundaries.
            let ch = src[i..].chars().next().unwrap_or('?');
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += ch.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_instruction() {
        let t = lex("@!%p1 ld.global.v2.f32 {%f1, %f2}, [%rd1+-4]; // c\n");
        let words: Vec<_> = t.iter().map(|t| t.tok).collect();
        assert_eq!(words[0], Tok::Punct('@'));
        assert_eq!(words[1], Tok::Punct('!'));
        assert_eq!(words[2], Tok::Word("%p1"));
        assert_eq!(words[3], Tok::Word("ld.global.v2.f32"));
        assert!(words.contains(&Tok::Word("%rd1")));
        // `::` qualifiers stay inside the word; a label's colon does not.
        let t = lex(
            "$L1: cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd2];",
        );
        let words: Vec<_> = t.iter().map(|t| t.tok).collect();
        assert_eq!(words[0], Tok::Word("$L1"));
        assert_eq!(words[1], Tok::Punct(':'));
        assert_eq!(
            words[2],
            Tok::Word("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes")
        );
        assert_eq!(words.last(), Some(&Tok::Punct(';')));
    }

    #[test]
    fn counts_lines_and_strings() {
        let t = lex("/* a\n b */ .file 1 \"x.cu\"\n.version 9.2");
        assert_eq!(t[0].line, 2);
        assert_eq!(t[2].tok, Tok::Str("x.cu"));
        assert_eq!(t[4].tok, Tok::Word("9.2"));
        assert_eq!(t[4].line, 3);
    }
}
