//! `.dockerignore` parsing and matching with Docker's semantics (pure).
//!
//! # What a line means
//!
//! Read as Docker's CLI reads the file (moby/patternmatcher's `ignorefile.ReadAll`, then
//! `patternmatcher.New`):
//!
//! - a UTF-8 byte-order mark before the first line is dropped;
//! - a line whose *first* character is `#` is a comment (`  # x` is a pattern, as in
//!   Docker, because the comment test comes before trimming);
//! - lines are trimmed; empty lines are ignored;
//! - a leading `!` makes the line an exception (whitespace after it is trimmed too); a
//!   lone `!` is an error;
//! - the pattern is cleaned like Go's `filepath.Clean` (`a//b/./c/../d` → `a/b/d`, the
//!   trailing `/` dropped) and a leading `/` is dropped: every pattern is relative to the
//!   context root.
//!
//! # What a pattern matches
//!
//! Go's `filepath.Match` syntax: `*` (any run of characters but `/`), `?` (one character
//! but `/`), `[...]` classes (`^` negates; ranges `a-z`; `\` escapes inside), `\x` (a
//! literal `x`), plus `**`, which matches any number of directories, zero included. A
//! pattern is matched against the **whole** path relative to the context root: `*.md`
//! excludes `README.md` but not `docs/README.md` (unlike `.gitignore`, which matches a
//! slash-less pattern at any depth). A pattern that matches a directory excludes
//! everything under it. Lines are read in order and the **last** line that matches a path
//! (or one of its parent directories) decides: an exclusion excludes, an exception
//! re-includes.
//!
//! Docker compiles each pattern to a regular expression and classifies it first; the
//! classification leaks into the results and we keep it, so that a context packs as
//! Docker would pack it:
//!
//! - a pattern starting with `**` and otherwise literal is a *suffix* test: `**foo`
//!   matches `barfoo`, and `**/foo` matches `foo` and `a/b/foo`;
//! - a literal pattern ending in `**` is a *prefix* test: `dir/**` matches `dir/x` (not
//!   `dir` itself), `foo**` matches `foobar/baz`;
//! - `**` followed by more pattern is `(.*/)?`, so `a**b` matches `ab` and `ax/b` but not
//!   `axb`; `.` in those regular expressions does not match a newline, nor does `**` here.
//!
//! Two deliberate differences from Docker, both in corners where Docker's regular
//! expression disagrees with the `filepath.Match` syntax it documents and validates
//! against: inside `[...]`, `*`, `?` and `\` followed by a letter are literal characters
//! here (Docker turns `[*]` into a different class and `[\d]` into digits), and a reversed
//! range such as `[z-a]` is rejected when the file is parsed (Docker fails on it at the
//! first match). `[!a]` is **not** a negation, in Docker or here: Go's syntax negates with
//! `^` only, and `!` in a class is a literal `!`.
//!
//! The decision for a path is Docker's `MatchesOrParentMatches`: a pattern applies to a
//! path if it matches the path or any parent directory of it. BuildKit's own walker caches
//! parent results and differs in one corner (an exception that only matches a parent,
//! listed after an exclusion that matches the child: `x/y` then `!x` keeps `x/y` here and
//! drops it there); the documented rule ("the last line that matches decides") is ours.
//!
//! # Pruning a walk
//!
//! [`Dockerignore::can_prune_dir`] says when a walker may skip an excluded directory
//! without reading it: when no exception listed after the last exclusion that covers the
//! directory could match anything beneath it. That is exact for literal exceptions and
//! conservative (it may say "walk it") for wildcard ones.

use std::fmt;

/// Why a `.dockerignore` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerignoreError {
    /// A line that is only `!` (Docker refuses it too).
    #[error(
        ".dockerignore line {line}: `!` alone is not a pattern (an exception names the paths it keeps, as in `!README.md`)"
    )]
    LoneExclamation {
        /// The line number, from 1.
        line: usize,
    },
    /// A pattern that is not valid `filepath.Match` syntax, such as an unclosed `[`.
    #[error(".dockerignore line {line}: pattern {pattern:?} is malformed: {reason}")]
    BadPattern {
        /// The line number, from 1.
        line: usize,
        /// The pattern as cleaned, without its `!`.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A parsed `.dockerignore`: its patterns in file order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Dockerignore {
    patterns: Vec<Pattern>,
}

/// One line: what it matches and whether it is an exception.
#[derive(Clone, PartialEq, Eq)]
struct Pattern {
    /// The cleaned pattern, without its `!`.
    text: String,
    exception: bool,
    kind: Kind,
}

/// How a pattern is tested, following Docker's classification (see the module docs).
#[derive(Clone, PartialEq, Eq)]
enum Kind {
    /// The path equals the text.
    Exact,
    /// The path starts with this (the text without its trailing `**`).
    Prefix(String),
    /// The path ends with this (the text without its leading `**`), or is it without
    /// its leading `/`.
    Suffix(String),
    /// The path is matched by these tokens, as a whole.
    Tokens(Vec<Token>),
}

/// One element of a compiled pattern.
#[derive(Clone, PartialEq, Eq)]
enum Token {
    /// This character.
    Literal(char),
    /// `?`: one character other than `/`.
    AnyButSlash,
    /// `[...]`: one character in (or, negated, not in) the class; `/` included.
    Class(Class),
    /// `*`: any run of characters other than `/`.
    Star,
    /// A trailing `**` after a wildcard: `.*`, any run of characters but a newline.
    Rest,
    /// `**` followed by more pattern: `(.*/)?`, nothing or any run ending in `/`.
    Dirs,
}

/// A bracket expression.
#[derive(Clone, PartialEq, Eq)]
struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

impl Dockerignore {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Result<Self, DockerignoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        // `str::lines` splits as Go's bufio.Scanner does: on `\n`, dropping a `\r` before it.
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            if raw.starts_with('#') {
                continue;
            }
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let (exception, rest) = match trimmed.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, trimmed),
            };
            let mut text = if rest.is_empty() {
                String::new()
            } else {
                let cleaned = clean(rest);
                match cleaned.strip_prefix('/') {
                    Some(relative) if !relative.is_empty() => relative.to_owned(),
                    _ => cleaned,
                }
            };
            // Docker cleans once more after re-attaching the `!`, which can empty an
            // exception (`! /` becomes `!`): the lone-`!` check comes after it.
            if exception {
                let again = clean(&format!("!{text}"));
                text = again.strip_prefix('!').unwrap_or(&again).to_owned();
            } else {
                text = clean(&text);
            }
            if exception && text.is_empty() {
                return Err(DockerignoreError::LoneExclamation { line });
            }
            patterns.push(Pattern::compile(text, exception, line)?);
        }
        Ok(Self { patterns })
    }

    /// True if the file has no patterns: nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// How many patterns (exclusions and exceptions) it holds.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether `path` (relative to the context root, `/`-separated, without a leading
    /// `./`) is left out of the context. The root itself (`""` or `.`) never is.
    pub fn is_excluded(&self, path: &str) -> bool {
        if path.is_empty() || path == "." {
            return false;
        }
        let mut excluded = false;
        for pattern in &self.patterns {
            // A pattern that cannot change the answer need not be tried (Docker skips
            // these too); the last one that matches decides.
            if pattern.exception != excluded {
                continue;
            }
            if pattern.matches_or_parent(path) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether a walker may skip the excluded directory `dir` without reading it: true
    /// only when `dir` is excluded and no exception could re-include anything beneath it.
    pub fn can_prune_dir(&self, dir: &str) -> bool {
        if !self.is_excluded(dir) {
            return false;
        }
        // The last exclusion covering `dir` also covers everything beneath it, and wins
        // over every exception before it; only a later exception can bring a path back,
        // and only by matching something strictly beneath `dir` (matching `dir` or a
        // parent would have re-included `dir` itself).
        let Some(last) = self
            .patterns
            .iter()
            .rposition(|p| !p.exception && p.matches_or_parent(dir))
        else {
            return false;
        };
        let under = format!("{dir}/");
        !self.patterns[last + 1..]
            .iter()
            .any(|p| p.exception && p.could_match_under(&under))
    }

    /// Adds an exception for exactly `path` if it would be excluded, so that it is kept
    /// (with the directories that lead to it) whatever the file says. The packer uses it
    /// for the Dockerfile and the ignore file itself.
    pub fn keep(&mut self, path: &str) {
        let path = clean(path);
        let path = path.trim_start_matches('/');
        if path.is_empty() || path == "." || !self.is_excluded(path) {
            return;
        }
        // An exact pattern, not a glob, so that a name with `*` or `[` keeps only itself.
        self.patterns.push(Pattern {
            text: path.to_owned(),
            exception: true,
            kind: Kind::Exact,
        });
    }
}

impl fmt::Debug for Dockerignore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.patterns.iter().map(|p| {
                if p.exception {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            }))
            .finish()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", if self.exception { "!" } else { "" }, self.text)
    }
}

impl Pattern {
    /// Validates `text` as `filepath.Match` syntax and compiles it as Docker does.
    fn compile(text: String, exception: bool, line: usize) -> Result<Self, DockerignoreError> {
        let bad = |reason| DockerignoreError::BadPattern {
            line,
            pattern: text.clone(),
            reason,
        };
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut kind = KindTag::Exact;
        let mut at = 0;
        let mut step = 0;
        while at < chars.len() {
            let ch = chars[at];
            at += 1;
            match ch {
                '*' if chars.get(at) == Some(&'*') => {
                    at += 1;
                    // `**/` is `**`: the slash is part of it.
                    if chars.get(at) == Some(&'/') {
                        at += 1;
                    }
                    if at == chars.len() {
                        if kind == KindTag::Exact {
                            kind = KindTag::Prefix;
                        } else {
                            tokens.push(Token::Rest);
                            kind = KindTag::Tokens;
                        }
                    } else {
                        tokens.push(Token::Dirs);
                        kind = KindTag::Tokens;
                    }
                    if step == 0 {
                        kind = KindTag::Suffix;
                    }
                }
                '*' => {
                    tokens.push(Token::Star);
                    kind = KindTag::Tokens;
                }
                '?' => {
                    tokens.push(Token::AnyButSlash);
                    kind = KindTag::Tokens;
                }
                '\\' => {
                    let Some(&escaped) = chars.get(at) else {
                        return Err(bad("it ends with a lone `\\`"));
                    };
                    at += 1;
                    tokens.push(Token::Literal(escaped));
                    kind = KindTag::Tokens;
                }
                '[' => {
                    let (class, next) = parse_class(&chars, at).map_err(bad)?;
                    at = next;
                    tokens.push(Token::Class(class));
                    kind = KindTag::Tokens;
                }
                ']' => {
                    tokens.push(Token::Literal(']'));
                    kind = KindTag::Tokens;
                }
                other => tokens.push(Token::Literal(other)),
            }
            step += 1;
        }
        let kind = match kind {
            KindTag::Exact => Kind::Exact,
            KindTag::Prefix => Kind::Prefix(text[..text.len() - 2].to_owned()),
            KindTag::Suffix => Kind::Suffix(text[2..].to_owned()),
            KindTag::Tokens => Kind::Tokens(tokens),
        };
        Ok(Self {
            text,
            exception,
            kind,
        })
    }

    /// Whether the pattern matches `path` itself.
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|bare| path == bare)
            }
            Kind::Tokens(tokens) => Nfa::new(tokens).run(path).accepts(),
        }
    }

    /// Whether the pattern matches `path` or one of its parent directories.
    fn matches_or_parent(&self, path: &str) -> bool {
        self.matches(path)
            || path
                .match_indices('/')
                .any(|(slash, _)| self.matches(&path[..slash]))
    }

    /// Whether some path starting with `prefix` (a directory and its `/`) and longer than
    /// it could match. May answer true when none can; never false when one can.
    fn could_match_under(&self, prefix: &str) -> bool {
        match &self.kind {
            Kind::Exact => self.text.starts_with(prefix),
            Kind::Prefix(start) => start.starts_with(prefix) || prefix.starts_with(start.as_str()),
            Kind::Suffix(_) => true,
            Kind::Tokens(tokens) => Nfa::new(tokens).run(prefix).alive(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KindTag {
    Exact,
    Prefix,
    Suffix,
    Tokens,
}

/// Parses a bracket expression whose `[` is just before `chars[at]`, with Go's
/// `filepath.Match` rules; returns the class and the index after its `]`.
fn parse_class(chars: &[char], mut at: usize) -> Result<(Class, usize), &'static str> {
    const UNCLOSED: &str = "a `[` class is not closed";
    let mut negated = false;
    if chars.get(at) == Some(&'^') {
        negated = true;
        at += 1;
    }
    let mut ranges = Vec::new();
    loop {
        match chars.get(at) {
            None => return Err(UNCLOSED),
            Some(']') if !ranges.is_empty() => return Ok((Class { negated, ranges }, at + 1)),
            _ => {}
        }
        let (lo, next) = class_char(chars, at)?;
        at = next;
        let mut hi = lo;
        if chars.get(at) == Some(&'-') {
            let (end, next) = class_char(chars, at + 1)?;
            at = next;
            hi = end;
            if hi < lo {
                return Err("a `[` class has a range whose end is before its start");
            }
        }
        ranges.push((lo, hi));
    }
}

/// One character of a class (Go's `getEsc`): not `-` or `]` unescaped, `\` escapes, and
/// something must follow it.
fn class_char(chars: &[char], mut at: usize) -> Result<(char, usize), &'static str> {
    match chars.get(at) {
        None => return Err("a `[` class is not closed"),
        Some('-') => return Err("a `[` class has a `-` without a character before it"),
        Some(']') => return Err("a `[` class is empty or has a range without an end"),
        Some('\\') => at += 1,
        Some(_) => {}
    }
    let Some(&c) = chars.get(at) else {
        return Err("a `[` class is not closed");
    };
    if at + 1 >= chars.len() {
        return Err("a `[` class is not closed");
    }
    Ok((c, at + 1))
}

/// The states of a compiled pattern, run forward over a string. State `2t` is "before
/// token `t`"; state `2t + 1` is "inside the `.*` of a `Dirs` token `t`, before its `/`".
struct Nfa<'a> {
    tokens: &'a [Token],
    states: Vec<bool>,
}

impl<'a> Nfa<'a> {
    fn new(tokens: &'a [Token]) -> Self {
        let mut states = vec![false; 2 * (tokens.len() + 1)];
        states[0] = true;
        let mut nfa = Self { tokens, states };
        nfa.close();
        nfa
    }

    /// Adds the states reachable without reading: every star may match nothing.
    fn close(&mut self) {
        for (t, token) in self.tokens.iter().enumerate() {
            if self.states[2 * t] && matches!(token, Token::Star | Token::Rest | Token::Dirs) {
                self.states[2 * (t + 1)] = true;
            }
        }
    }

    fn run(mut self, text: &str) -> Self {
        for c in text.chars() {
            // Only the end state left: any further character fails the match.
            if !self.alive() {
                self.states.fill(false);
                break;
            }
            self.step(c);
        }
        self
    }

    fn step(&mut self, c: char) {
        let mut next = vec![false; self.states.len()];
        for (t, token) in self.tokens.iter().enumerate() {
            if self.states[2 * t] {
                match token {
                    Token::Literal(l) => next[2 * (t + 1)] |= *l == c,
                    Token::AnyButSlash => next[2 * (t + 1)] |= c != '/',
                    Token::Class(class) => next[2 * (t + 1)] |= class.matches(c),
                    Token::Star => next[2 * t] |= c != '/',
                    Token::Rest => next[2 * t] |= c != '\n',
                    Token::Dirs => {
                        next[2 * t + 1] |= c != '\n';
                        next[2 * (t + 1)] |= c == '/';
                    }
                }
            }
            if self.states[2 * t + 1] {
                next[2 * t + 1] |= c != '\n';
                next[2 * (t + 1)] |= c == '/';
            }
        }
        self.states = next;
        self.close();
    }

    /// Whether the whole text read so far matches.
    fn accepts(&self) -> bool {
        self.states[2 * self.tokens.len()]
    }

    /// Whether reading more could still reach a match.
    fn alive(&self) -> bool {
        let end = 2 * self.tokens.len();
        self.states[..end].iter().any(|&s| s)
    }
}

/// Go's `filepath.Clean` on a `/`-separated path: one `/` between elements, no `.`
/// elements, `..` cancelling the element before it (and dropped at a root), no trailing
/// `/`; `.` for nothing.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ignore(lines: &[&str]) -> Dockerignore {
        Dockerignore::parse(&lines.join("\n")).unwrap()
    }

    fn one(pattern: &str) -> Pattern {
        let parsed = Dockerignore::parse(pattern).unwrap();
        assert_eq!(parsed.len(), 1, "{pattern}");
        parsed.patterns[0].clone()
    }

    #[test]
    fn docker_documented_examples() {
        // https://docs.docker.com/build/concepts/context/#dockerignore-files
        let file = ignore(&["# comment", "*/temp*", "*/*/temp*", "temp?"]);
        for (path, excluded) in [
            ("somedir/temporary.txt", true),
            ("somedir/temp", true),
            ("temporary.txt", false),
            ("somedir/subdir/temporary.txt", true),
            ("a/b/c/temporary.txt", false),
            ("tempa", true),
            ("tempb", true),
            ("temp", false),
            ("temp12", false),
            ("# comment", false),
        ] {
            assert_eq!(file.is_excluded(path), excluded, "{path}");
        }

        let go = ignore(&["**/*.go"]);
        for (path, excluded) in [
            ("main.go", true),
            ("cmd/kiln/main.go", true),
            ("main.go.txt", false),
            ("go", false),
        ] {
            assert_eq!(go.is_excluded(path), excluded, "{path}");
        }

        let md = ignore(&["*.md", "!README*.md", "README-secret.md"]);
        for (path, excluded) in [
            ("CHANGELOG.md", true),
            ("README.md", false),
            ("README-public.md", false),
            ("README-secret.md", true),
            ("docs/guide.md", false),
        ] {
            assert_eq!(md.is_excluded(path), excluded, "{path}");
        }

        // Order matters: an earlier exception is overridden by a later exclusion.
        let md = ignore(&["*.md", "README-secret.md", "!README*.md"]);
        assert!(!md.is_excluded("README-secret.md"));
        assert!(md.is_excluded("NOTES.md"));
    }

    #[test]
    fn whole_path_not_any_depth() {
        let file = ignore(&["*.md", "node_modules"]);
        assert!(file.is_excluded("README.md"));
        assert!(!file.is_excluded("docs/README.md"));
        assert!(file.is_excluded("node_modules"));
        assert!(file.is_excluded("node_modules/left-pad/index.js"));
        assert!(!file.is_excluded("web/node_modules/left-pad/index.js"));
    }

    #[test]
    fn reading_lines_like_docker() {
        let file = Dockerignore::parse(
            "\u{feff}test1\r\n/test2\n/a/file/here\n\nlastfile\n# comment\n  # not a comment\n! /inverted/abs/path\n  spaced  \n./dot/../x//y/\n",
        )
        .unwrap();
        assert_eq!(
            format!("{file:?}"),
            r##"["test1", "test2", "a/file/here", "lastfile", "# not a comment", "!inverted/abs/path", "spaced", "x/y"]"##
        );
        assert!(file.is_excluded("x/y/z"));
        assert!(file.is_excluded("# not a comment"));
        assert!(Dockerignore::parse("").unwrap().is_empty());
        assert!(Dockerignore::parse("# only\n\n   \n").unwrap().is_empty());
    }

    #[test]
    fn lone_exclamation_is_an_error_naming_its_line() {
        for text in ["a\n!", "a\n  !  ", "a\n! /"] {
            assert_eq!(
                Dockerignore::parse(text),
                Err(DockerignoreError::LoneExclamation { line: 2 }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_patterns_are_typed_errors_naming_their_line() {
        for bad in [
            "[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[z-a]",
        ] {
            let err = Dockerignore::parse(&format!("ok\n# c\n{bad}")).unwrap_err();
            match &err {
                DockerignoreError::BadPattern { line, pattern, .. } => {
                    assert_eq!(*line, 3, "{bad}");
                    assert_eq!(pattern, bad);
                }
                other => panic!("{bad}: {other:?}"),
            }
            assert!(err.to_string().contains("line 3"), "{err}");
        }
    }

    /// patternmatcher's `TestMatches` table (exact: the pattern matches the path itself;
    /// inexact: only through a parent; fail: neither).
    #[test]
    fn patternmatcher_match_table() {
        #[derive(Clone, Copy, PartialEq, Debug)]
        enum M {
            Exact,
            Inexact,
            Fail,
        }
        use M::*;
        let cases = [
            ("**", "file", Exact),
            ("**", "file/", Exact),
            ("**/", "file", Exact),
            ("**/", "file/", Exact),
            ("**", "/", Exact),
            ("**/", "/", Exact),
            ("**", "dir/file", Exact),
            ("**/", "dir/file", Exact),
            ("**", "dir/file/", Exact),
            ("**/", "dir/file/", Exact),
            ("**/**", "dir/file", Exact),
            ("**/**", "dir/file/", Exact),
            ("dir/**", "dir/file", Exact),
            ("dir/**", "dir/file/", Exact),
            ("dir/**", "dir/dir2/file", Exact),
            ("dir/**", "dir/dir2/file/", Exact),
            ("**/dir", "dir", Exact),
            ("**/dir", "dir/file", Inexact),
            ("**/dir2/*", "dir/dir2/file", Exact),
            ("**/dir2/*", "dir/dir2/file/", Inexact),
            ("**/dir2/**", "dir/dir2/dir3/file", Exact),
            ("**/dir2/**", "dir/dir2/dir3/file/", Exact),
            ("**file", "file", Exact),
            ("**file", "dir/file", Exact),
            ("**/file", "dir/file", Exact),
            ("**file", "dir/dir/file", Exact),
            ("**/file", "dir/dir/file", Exact),
            ("**/file*", "dir/dir/file", Exact),
            ("**/file*", "dir/dir/file.txt", Exact),
            ("**/file*txt", "dir/dir/file.txt", Exact),
            ("**/file*.txt", "dir/dir/file.txt", Exact),
            ("**/file*.txt*", "dir/dir/file.txt", Exact),
            ("**/**/*.txt", "dir/dir/file.txt", Exact),
            ("**/**/*.txt2", "dir/dir/file.txt", Fail),
            ("**/*.txt", "file.txt", Exact),
            ("**/**/*.txt", "file.txt", Exact),
            ("a**/*.txt", "a/file.txt", Exact),
            ("a**/*.txt", "a/dir/file.txt", Exact),
            ("a**/*.txt", "a/dir/dir/file.txt", Exact),
            ("a/*.txt", "a/dir/file.txt", Fail),
            ("a/*.txt", "a/file.txt", Exact),
            ("a/*.txt**", "a/file.txt", Exact),
            ("a[b-d]e", "ae", Fail),
            ("a[b-d]e", "ace", Exact),
            ("a[b-d]e", "aae", Fail),
            ("a[^b-d]e", "aze", Exact),
            (".*", ".foo", Exact),
            (".*", "foo", Fail),
            ("abc.def", "abcdef", Fail),
            ("abc.def", "abc.def", Exact),
            ("abc.def", "abcZdef", Fail),
            ("abc?def", "abcZdef", Exact),
            ("abc?def", "abcdef", Fail),
            ("**/foo/bar", "foo/bar", Exact),
            ("**/foo/bar", "dir/foo/bar", Exact),
            ("**/foo/bar", "dir/dir2/foo/bar", Exact),
            ("abc/**", "abc", Fail),
            ("abc/**", "abc/def", Exact),
            ("abc/**", "abc/def/ghi", Exact),
            ("**/.foo", ".foo", Exact),
            ("**/.foo", "bar.foo", Fail),
            ("a(b)c/def", "a(b)c/def", Exact),
            ("a(b)c/def", "a(b)c/xyz", Fail),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", Exact),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Exact,
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Exact,
            ),
            ("a\\\\", "a\\", Exact),
            ("a\\*b", "a*b", Exact),
        ];
        for (pattern, path, expected) in cases {
            let p = one(pattern);
            assert_eq!(
                p.matches(path),
                expected == Exact,
                "exact {pattern:?} {path:?}"
            );
            assert_eq!(
                p.matches_or_parent(path),
                expected != Fail,
                "or-parent {pattern:?} {path:?}"
            );
        }
    }

    #[test]
    fn patternmatcher_multi_pattern_table() {
        let cases: [(&[&str], &str, bool); 4] = [
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for (patterns, path, excluded) in cases {
            assert_eq!(
                ignore(patterns).is_excluded(path),
                excluded,
                "{patterns:?} {path}"
            );
        }
    }

    /// patternmatcher's `TestMatch` table, taken from Go's `filepath.Match` tests.
    #[test]
    fn go_filepath_match_table() {
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
        ];
        for (pattern, path, excluded) in cases {
            assert_eq!(
                ignore(&[pattern]).is_excluded(path),
                excluded,
                "{pattern:?} {path:?}"
            );
        }
    }

    #[test]
    fn docker_quirks_are_kept() {
        // `**` then a literal is a suffix test.
        assert!(ignore(&["**foo"]).is_excluded("barfoo"));
        // `**` inside a pattern is `(.*/)?`.
        let mid = ignore(&["a**b"]);
        assert!(mid.is_excluded("ab"));
        assert!(mid.is_excluded("ax/b"));
        assert!(!mid.is_excluded("axb"));
        // `!` in a class is a literal, as in Go and Docker.
        let bang = ignore(&["[!a]"]);
        assert!(bang.is_excluded("!"));
        assert!(bang.is_excluded("a"));
        assert!(!bang.is_excluded("b"));
        // A negated class matches `/`, as in both of Docker's matchers.
        assert!(ignore(&["a[^x]b"]).is_excluded("a/b"));
        // `.` never matches `/`-less root; a pattern of `.` or `/` excludes nothing.
        assert!(!ignore(&["."]).is_excluded("anything"));
        assert!(!ignore(&["/"]).is_excluded("anything"));
        assert!(!ignore(&["**"]).is_excluded("."));
        // Cleaning makes `foo/` and `/foo` the same as `foo`.
        for pattern in ["foo/", "/foo", "./foo", "foo/bar/.."] {
            assert!(ignore(&[pattern]).is_excluded("foo/x"), "{pattern}");
        }
    }

    #[test]
    fn folder_exceptions() {
        // patternmatcher's folder tests: an exception under an excluded folder keeps it.
        for lines in [
            ["docs", "!docs/README.md"],
            ["docs/", "!docs/README.md"],
            ["docs/*", "!docs/README.md"],
        ] {
            let file = ignore(&lines);
            assert!(!file.is_excluded("docs/README.md"), "{lines:?}");
            assert!(file.is_excluded("docs/other.md"), "{lines:?}");
        }
        // An exception before its exclusion is overridden.
        assert!(ignore(&["!fileutils.go", "*.go"]).is_excluded("fileutils.go"));
        assert!(!ignore(&["*.go", "!fileutils.go"]).is_excluded("fileutils.go"));
    }

    #[test]
    fn pruning() {
        let plain = ignore(&["node_modules", "target/**"]);
        assert!(plain.can_prune_dir("node_modules"));
        assert!(plain.can_prune_dir("target/debug"));
        assert!(!plain.can_prune_dir("src"), "not excluded");

        let literal = ignore(&["vendor", "!vendor/keep/me.txt"]);
        assert!(!literal.can_prune_dir("vendor"));
        assert!(!literal.can_prune_dir("vendor/keep"));
        assert!(literal.can_prune_dir("vendor/other"));

        let wild = ignore(&["build", "!**/*.keep"]);
        assert!(!wild.can_prune_dir("build"));

        let class = ignore(&["out", "!out/[ab]*/x"]);
        assert!(!class.can_prune_dir("out"));
        assert!(!class.can_prune_dir("out/apple"));
        assert!(class.can_prune_dir("out/cherry"));

        // An exception before the exclusion that covers the directory cannot bring
        // anything back.
        let early = ignore(&["!cache/keep", "cache"]);
        assert!(early.can_prune_dir("cache"));
    }

    #[test]
    fn keep_adds_a_literal_exception_only_when_needed() {
        let mut file = ignore(&["*", "build"]);
        file.keep("Dockerfile");
        file.keep("build/Docker[file]");
        assert!(!file.is_excluded("Dockerfile"));
        assert!(!file.is_excluded("build/Docker[file]"));
        assert!(file.is_excluded("build/Dockerf"));
        assert!(!file.can_prune_dir("build"));
        let mut untouched = ignore(&["*.md"]);
        untouched.keep("Dockerfile");
        assert_eq!(untouched.len(), 1);
    }

    #[test]
    fn clean_is_go_filepath_clean() {
        for (input, cleaned) in [
            ("", "."),
            (".", "."),
            ("a/", "a"),
            ("a//b", "a/b"),
            ("./a/./b/", "a/b"),
            ("a/../b", "b"),
            ("a/..", "."),
            ("../a", "../a"),
            ("../../a/..", "../.."),
            ("/", "/"),
            ("/../a", "/a"),
            ("//a", "/a"),
        ] {
            assert_eq!(clean(input), cleaned, "{input:?}");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        // No `.` or `..` segments: a walker never produces them.
        "[ab][ab.]{0,2}"
    }

    fn literal_path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..4).prop_map(|parts| parts.join("/"))
    }

    fn glob() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("a".to_owned()),
                Just("b".to_owned()),
                Just("/".to_owned()),
                Just("*".to_owned()),
                Just("**".to_owned()),
                Just("?".to_owned()),
                Just("[ab]".to_owned()),
                Just("[^a]".to_owned()),
            ],
            1..6,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn matching_is_deterministic(lines in prop::collection::vec(
            (any::<bool>(), glob()), 1..5), path in literal_path()) {
            let text: Vec<String> = lines
                .iter()
                .map(|(exception, glob)| format!("{}{glob}", if *exception { "!" } else { "" }))
                .collect();
            let Ok(first) = Dockerignore::parse(&text.join("\n")) else { return Ok(()) };
            let second = Dockerignore::parse(&text.join("\n")).unwrap();
            prop_assert_eq!(first.is_excluded(&path), second.is_excluded(&path));
            prop_assert_eq!(first.is_excluded(&path), first.is_excluded(&path));
        }

        #[test]
        fn a_literal_pattern_matches_its_path_and_descendants_only(
            pattern in literal_path(), path in literal_path()) {
            let file = ignore(&[&pattern]);
            let cleaned = clean(&pattern);
            let expected = path == cleaned || path.starts_with(&format!("{cleaned}/"));
            prop_assert_eq!(file.is_excluded(&path), expected, "{} {}", pattern, path);
        }

        #[test]
        fn pruning_never_drops_a_kept_path(
            lines in prop::collection::vec((any::<bool>(), glob()), 1..5),
            dir in literal_path(),
            rest in literal_path(),
        ) {
            let text: Vec<String> = lines
                .iter()
                .map(|(exception, glob)| format!("{}{glob}", if *exception { "!" } else { "" }))
                .collect();
            let Ok(file) = Dockerignore::parse(&text.join("\n")) else { return Ok(()) };
            if file.can_prune_dir(&dir) {
                let under = format!("{dir}/{rest}");
                prop_assert!(file.is_excluded(&under), "{:?} pruned {} but keeps {}", file, dir, under);
            }
        }
    }
}
