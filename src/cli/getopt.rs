//! glibc's getopt_long, as kmod's tools parse with it: clusters (`-ae`), attached arguments
//! (`-bDIR`, `--basedir=DIR`), unambiguous prefixes of long names (`--verb`), options anywhere
//! among the operands (argv permutation, unless POSIXLY_CORRECT), `--`, and glibc's own messages
//! for what it refuses (`depmod: unrecognized option '--x'`).
//!
//! The result is the command line rewritten one option per word in argh's spelling, so argh
//! parses what getopt accepted and never sees what getopt refuses.

/// What an option becomes for argh: its short letter, or a long name of argh's (options
/// getopt knows under a short letter that argh spells long, and xdkms's own long options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    Short(char),
    Long(&'static str),
}

/// One option of a getopt table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opt {
    /// The short letter, if the option has one.
    pub short: Option<char>,
    /// The long names (kmod has two for `-n`: `--show` and `--dry-run`).
    pub long: &'static [&'static str],
    pub takes_argument: bool,
    pub spelling: Spelling,
}

impl Opt {
    /// An option with a short letter argh spells the same way.
    pub const fn short(letter: char, long: &'static [&'static str], takes_argument: bool) -> Opt {
        Opt { short: Some(letter), long, takes_argument, spelling: Spelling::Short(letter) }
    }

    /// An option argh knows by a long name only.
    pub const fn long(
        short: Option<char>,
        long: &'static [&'static str],
        takes_argument: bool,
        argh: &'static str,
    ) -> Opt {
        Opt { short, long, takes_argument, spelling: Spelling::Long(argh) }
    }
}

/// Rewrites `args` as getopt_long with `table` reads them. `program` is what glibc puts in front
/// of its messages (argv[0]). Returns the rewritten words (options first, then `--` and the
/// operands), or the message getopt prints for the first word it refuses.
pub fn rewrite(program: &str, args: &[String], table: &[Opt]) -> Result<Vec<String>, String> {
    parse(program, args, table, false)
}

/// [`rewrite`] that passes over what it cannot read (unknown options are dropped; a missing
/// argument ends the scan), for a first look at a command line whose table is not known yet.
pub fn skim(args: &[String], table: &[Opt]) -> Vec<String> {
    parse("", args, table, true).unwrap_or_default()
}

fn parse(program: &str, args: &[String], table: &[Opt], lenient: bool) -> Result<Vec<String>, String> {
    let posixly_correct = std::env::var_os("POSIXLY_CORRECT").is_some();
    let mut options = Vec::new();
    let mut operands = Vec::new();
    let mut words = args.iter();
    // A refusal ends the parse: an error, or for a lenient scan the end of what it reads.
    macro_rules! refuse {
        ($scan:lifetime, $($message:tt)*) => {
            if lenient {
                break $scan;
            } else {
                return Err(format!($($message)*));
            }
        };
    }
    'words: while let Some(word) = words.next() {
        if word == "--" {
            operands.extend(words.by_ref().cloned());
            break;
        }
        if let Some(long_word) = word.strip_prefix("--") {
            let (opt, matched, value) = match find_long(program, long_word, table) {
                Ok(found) => found,
                Err(_) if lenient => continue,
                Err(message) => return Err(message),
            };
            let value = match (value, opt.takes_argument) {
                (Some(_), false) => refuse!('words, "{program}: option '--{matched}' doesn't allow an argument"),
                (Some(v), true) => Some(v.to_string()),
                (None, true) => match words.next() {
                    Some(next) => Some(next.clone()),
                    None => refuse!('words, "{program}: option '--{matched}' requires an argument"),
                },
                (None, false) => None,
            };
            push(&mut options, opt, value);
            continue;
        }
        let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) else {
            if posixly_correct {
                operands.push(word.clone());
                operands.extend(words.by_ref().cloned());
                break;
            }
            operands.push(word.clone());
            continue;
        };
        for (at, letter) in cluster.char_indices() {
            let Some(opt) = table.iter().find(|o| o.short == Some(letter)) else {
                if lenient {
                    continue;
                }
                return Err(format!("{program}: invalid option -- '{letter}'"));
            };
            if !opt.takes_argument {
                push(&mut options, opt, None);
                continue;
            }
            let rest = &cluster[at + letter.len_utf8()..];
            let value = if !rest.is_empty() {
                rest.to_string()
            } else {
                match words.next() {
                    Some(next) => next.clone(),
                    None => refuse!('words, "{program}: option requires an argument -- '{letter}'"),
                }
            };
            push(&mut options, opt, Some(value));
            break;
        }
    }
    if !operands.is_empty() {
        options.push("--".to_string());
        options.extend(operands);
    }
    Ok(options)
}

/// glibc's long-option lookup: an exact name wins; otherwise a prefix of exactly one option (or
/// of several that mean the same thing); otherwise the word is ambiguous or unknown. Returns the
/// option, its name as the table spells it (glibc's later messages use that), and the `=` value.
fn find_long<'a>(
    program: &str,
    word: &'a str,
    table: &'a [Opt],
) -> Result<(&'a Opt, &'static str, Option<&'a str>), String> {
    let (name, value) = match word.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (word, None),
    };
    for opt in table {
        if let Some(exact) = opt.long.iter().find(|n| **n == name) {
            return Ok((opt, exact, value));
        }
    }
    let candidates: Vec<(&Opt, &'static str)> = table
        .iter()
        .flat_map(|o| o.long.iter().filter(|n| !name.is_empty() && n.starts_with(name)).map(move |n| (o, *n)))
        .collect();
    match candidates.first() {
        None => Err(format!("{program}: unrecognized option '--{word}'")),
        Some(&(first, matched)) if candidates.iter().all(|(o, _)| o == &first) => Ok((first, matched, value)),
        Some(_) => {
            let names: Vec<String> = candidates.iter().map(|(_, n)| format!(" '--{n}'")).collect();
            Err(format!("{program}: option '--{word}' is ambiguous; possibilities:{}", names.concat()))
        }
    }
}

fn push(out: &mut Vec<String>, opt: &Opt, value: Option<String>) {
    match opt.spelling {
        Spelling::Short('h') | Spelling::Long("help") => out.push("--help".into()),
        Spelling::Short(letter) => out.push(format!("-{letter}")),
        Spelling::Long(name) => out.push(format!("--{name}")),
    }
    out.extend(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[Opt] = &[
        Opt::short('a', &["all"], false),
        Opt::short('b', &["basedir"], true),
        Opt::short('n', &["show", "dry-run"], false),
        Opt::short('v', &["verbose"], false),
        Opt::short('V', &["version"], false),
        Opt::short('h', &["help"], false),
        Opt::long(Some('o'), &["outdir"], true, "outdir"),
        Opt::long(None, &["kmod-version"], true, "kmod-version"),
    ];

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn ok(s: &str) -> Vec<String> {
        rewrite("depmod", &words(s), TABLE).expect("accepted")
    }

    fn refused(s: &str) -> String {
        rewrite("depmod", &words(s), TABLE).expect_err("refused")
    }

    #[test]
    fn clusters_attached_arguments_and_permutation() {
        assert_eq!(ok("6.1 -an -b/r -o out"), words("-a -n -b /r --outdir out -- 6.1"));
        assert_eq!(ok("--basedir=/r --kmod-version 34 6.1 -- -v"), words("-b /r --kmod-version 34 -- 6.1 -v"));
        assert_eq!(ok("-h"), words("--help"));
        assert_eq!(ok("--dry-run --sh"), words("-n -n"));
    }

    #[test]
    fn a_skim_keeps_what_it_read_before_a_refusal() {
        assert_eq!(skim(&words("--kmod-version 34 --nonsense -Z -a -b"), TABLE), words("--kmod-version 34 -a"));
    }

    #[test]
    fn unambiguous_prefixes_and_glibc_messages() {
        assert_eq!(ok("--verb --al --base=/x"), words("-v -a -b /x"));
        assert_eq!(refused("--x=5"), "depmod: unrecognized option '--x=5'");
        assert_eq!(refused("--ver=3"), "depmod: option '--ver=3' is ambiguous; possibilities: '--verbose' '--version'");
        assert_eq!(refused("--verb=3"), "depmod: option '--verbose' doesn't allow an argument");
        assert_eq!(refused("-Z"), "depmod: invalid option -- 'Z'");
        assert_eq!(refused("-ab"), "depmod: option requires an argument -- 'b'");
        assert_eq!(refused("--basedir"), "depmod: option '--basedir' requires an argument");
        assert_eq!(ok("-- -x"), words("-- -x"));
    }
}
