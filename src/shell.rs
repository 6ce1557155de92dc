//! Quoting words for `/bin/sh`: what a Slurm job's `--wrap` runs, and the
//! commands cairn suggests a person copy.

/// `s` as one shell word, always single-quoted.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` as one shell word, quoted only where the shell would otherwise
/// split or expand it: what a suggested command shows.
pub fn word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-.,/:=+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        quote(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_where_the_shell_would_change_them() {
        assert_eq!(quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(word("load.source=../data/x.tar.gz"), "load.source=../data/x.tar.gz");
        assert_eq!(word("m={ arch = \"fast\" }"), "'m={ arch = \"fast\" }'");
        assert_eq!(word(""), "''");
        assert_eq!(word("$HOME"), "'$HOME'");
    }
}
