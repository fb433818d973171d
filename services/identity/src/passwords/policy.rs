//! The password policy, after NIST SP 800-63B (5.1.1.2): a length of 12 to 128 characters,
//! and no password that is easy to guess — a handful of characters repeated, a keyboard or
//! alphabet run, a common password's word dressed up with digits and symbols
//! (`Password1234!`), or a word of the account itself (the email's name, the tenant id).
//! No composition rules (a digit, a capital): the standard advises against them.

use palisade_grpc::FieldViolation;

pub const MIN_LENGTH: usize = 12;
pub const MAX_LENGTH: usize = 128;
// No password the policy accepts is refused unread (see `check_policy`).
const _: () = assert!(super::MAX_TYPED_BYTES >= 4 * 4 * MAX_LENGTH);

/// Fewer different characters than this is a repetition (`abababababab`, `111111111111`).
const MIN_DISTINCT: usize = 5;

/// Words of the account shorter than this are not looked for (`ada` is inside `cicada`).
const MIN_CONTEXT_WORD: usize = 4;

/// Runs of keys and letters that people type as passwords, forwards (backwards is checked too).
const RUNS: [&str; 5] = [
    "1234567890",
    "qwertyuiop",
    "asdfghjkl",
    "zxcvbnm",
    "abcdefghijklmnopqrstuvwxyz",
];

/// The keyboard's rows (US layout), each key unshifted and shifted: a walk over the keys is
/// the same walk whichever characters it types.
const KEY_ROWS: [[&str; 2]; 4] = [
    ["1234567890-=", "!@#$%^&*()_+"],
    ["qwertyuiop[]\\", "QWERTYUIOP{}|"],
    ["asdfghjkl;'", "ASDFGHJKL:\""],
    ["zxcvbnm,./", "ZXCVBNM<>?"],
];

/// A keyboard walk moves to a neighbouring key at every step but at most one in this many.
const MIN_WALK: usize = 4;

/// The words inside the most used passwords (from the published breach-frequency lists),
/// letters only: a password whose letters are one of these, whatever digits and symbols
/// surround them, is among the first an attacker tries.
const COMMON_WORDS: &[&str] = &[
    "abc",
    "access",
    "admin",
    "administrator",
    "angel",
    "ashley",
    "autumn",
    "azerty",
    "bailey",
    "baseball",
    "basketball",
    "batman",
    "charlie",
    "changeme",
    "cheese",
    "computer",
    "default",
    "dragon",
    "football",
    "freedom",
    "guest",
    "hello",
    "helloworld",
    "hockey",
    "hunter",
    "iloveyou",
    "jennifer",
    "jordan",
    "killer",
    "letmein",
    "login",
    "love",
    "master",
    "michael",
    "monkey",
    "mustang",
    "palisade",
    "pass",
    "passw",
    "passwd",
    "password",
    "passwort",
    "pepper",
    "princess",
    "qazwsx",
    "qwerty",
    "qwertyuiop",
    "root",
    "secret",
    "shadow",
    "soccer",
    "spring",
    "starwars",
    "summer",
    "sunshine",
    "superman",
    "test",
    "trustno",
    "welcome",
    "whatever",
    "winter",
    "zaq",
];

/// `Some(violation)` when `password` (the field `field`) breaks the policy. `context` holds
/// words of the account (the email's local part, the tenant id) that it must not contain.
pub fn check_policy(field: &str, password: &str, context: &[&str]) -> Option<FieldViolation> {
    // Longer than any password of MAX_LENGTH characters can be once normalized (NFKC joins at
    // most four characters into one, e.g. `α` and three marks into U+1F82: at most 4 ×
    // MAX_LENGTH characters of at most 4 bytes as typed), and not worth normalizing.
    if password.len() > super::MAX_TYPED_BYTES {
        let problem = format!("must be at most {MAX_LENGTH} characters");
        return Some(FieldViolation::new(field, problem));
    }
    // Judged as it will be hashed.
    let password = &*super::normalized(password);
    let length = password.chars().count();
    let problem = if length < MIN_LENGTH {
        format!("must be at least {MIN_LENGTH} characters")
    } else if length > MAX_LENGTH {
        format!("must be at most {MAX_LENGTH} characters")
    } else {
        weakness(password, context)?.to_owned()
    };
    Some(FieldViolation::new(field, problem))
}

/// Why a password of an acceptable length is still easy to guess, if it is.
fn weakness(password: &str, context: &[&str]) -> Option<&'static str> {
    let lower = password.to_lowercase();
    let mut distinct: Vec<char> = lower.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT {
        return Some("is too repetitive: use more different characters, e.g. a few random words");
    }
    if is_run(&lower) || is_keyboard_walk(password) {
        return Some("is a keyboard or alphabet sequence");
    }
    // The word in the middle: digits and symbols around it dropped (`Summer2024!`), those
    // inside read as the letters they stand for (`p@ssw0rd`).
    let core: String = lower
        .trim_matches(|c: char| !c.is_alphabetic())
        .chars()
        .filter_map(unleet)
        .collect();
    let common = COMMON_WORDS.iter().any(|word| {
        core.len().is_multiple_of(word.len()) && core == word.repeat(core.len() / word.len())
    });
    if !core.is_empty() && common {
        return Some("is a common password: use a few random words instead");
    }
    // Whole words only, of four letters or more: shorter ones turn up inside anything.
    let personal = context
        .iter()
        .flat_map(|text| text.split(|c: char| !c.is_alphanumeric()))
        .map(str::to_lowercase)
        .any(|word| word.chars().count() >= MIN_CONTEXT_WORD && lower.contains(&word));
    if personal {
        return Some("must not contain the account's name or tenant");
    }
    None
}

/// Whether `text` is a stretch of one of `RUNS`, forwards or backwards, wrapping around
/// (`123456789012`).
fn is_run(text: &str) -> bool {
    RUNS.iter().any(|run| {
        let forwards = run.repeat(1 + MAX_LENGTH / run.len());
        let backwards: String = forwards.chars().rev().collect();
        forwards.contains(text) || backwards.contains(text)
    })
}

/// Whether `password` is typed by walking the keyboard, one key to the next beside, above or
/// below it, with few jumps: rows run together (`qwertyuiopasdfgh`, `mnbvcxzlkjhg`) or
/// columns (`1qaz2wsx3edc`). A walk moves on: pressing a key again or going back to the key
/// before is not a step of one, since words do both on neighbouring keys (`assessed
/// desserts`). Text has a jump at nearly every step.
fn is_keyboard_walk(password: &str) -> bool {
    let keys: Vec<Option<(usize, usize)>> = password.chars().map(key_of).collect();
    let steps = (1..keys.len()).filter(|&i| {
        let (from, to) = (keys[i - 1], keys[i]);
        let back = i >= 2 && keys[i - 2] == to;
        neighbours(from, to) && from != to && !back
    });
    let jumps = keys.len().saturating_sub(1) - steps.count();
    (jumps + 1) * MIN_WALK <= keys.len()
}

/// The row and column of the key that types `c`, if the keyboard has one.
fn key_of(c: char) -> Option<(usize, usize)> {
    KEY_ROWS.iter().enumerate().find_map(|(row, forms)| {
        forms
            .iter()
            .find_map(|form| form.chars().position(|key| key == c))
            .map(|column| (row, column))
    })
}

/// Whether two keys are the same or touch. Each row sits half a key right of the one above,
/// so key `c` of a row touches keys `c` and `c + 1` of the row above.
fn neighbours(a: Option<(usize, usize)>, b: Option<(usize, usize)>) -> bool {
    let (Some((row_a, col_a)), Some((row_b, col_b))) = (a, b) else {
        return false;
    };
    if row_a == row_b {
        col_a.abs_diff(col_b) <= 1
    } else if row_b == row_a + 1 {
        col_b == col_a || col_b + 1 == col_a
    } else if row_a == row_b + 1 {
        col_a == col_b || col_a + 1 == col_b
    } else {
        false
    }
}

/// The letter a character stands for, as people write them in passwords (`p@ssw0rd`); digits
/// and symbols that stand for none are dropped.
fn unleet(c: char) -> Option<char> {
    match c {
        '0' => Some('o'),
        '1' | '!' => Some('i'),
        '3' => Some('e'),
        '4' | '@' => Some('a'),
        '5' | '$' => Some('s'),
        '7' => Some('t'),
        c if c.is_alphabetic() => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(password: &str) -> bool {
        check_policy("password", password, &["ada.lovelace", "acme"]).is_some()
    }

    #[test]
    fn the_policy_bounds_the_length() {
        assert!(refused("short"));
        assert!(refused(&"x".repeat(129)));
        assert!(!refused("correct horse battery staple"));
        // Characters, not bytes: 128 two-byte letters are within the limit.
        assert!(!refused(&"éèêëç".repeat(128 / 5)));
        // Four code points NFKC makes one: 512 typed, 128 once normalized, within the length
        // (though far too repetitive).
        let composed = "\u{3b1}\u{313}\u{300}\u{345}".repeat(MAX_LENGTH);
        let normalized = super::super::normalized(&composed);
        assert_eq!(normalized.chars().count(), MAX_LENGTH);
        let violation = check_policy("password", &composed, &[]);
        assert!(violation.is_some_and(|violation| violation.description.contains("repetitive")));
        // Past MAX_TYPED_BYTES, refused unread: a million characters that NFKC would make 18
        // each.
        let violation = check_policy("password", &"\u{FDFA}".repeat(1 << 20), &[]);
        assert_eq!(
            violation.map(|violation| violation.description),
            Some(format!("must be at most {MAX_LENGTH} characters"))
        );
    }

    #[test]
    fn the_length_is_that_of_the_normalized_password() {
        // 12 code points as typed, 11 characters once the accent is composed.
        assert!(refused("cafe\u{301} au lai"));
        assert!(!refused("cafe\u{301} au lait"));
    }

    #[test]
    fn guessable_passwords_are_refused() {
        for weak in [
            "aaaaaaaaaaaa",
            "abababababab",
            "121212121212",
            "123456789012",
            "0987654321098",
            "Qwerty123456!",
            "abcdefghijklm",
            "Password1234",
            "P@ssw0rd2024!",
            "Summer2024!!",
            "iloveyou12345",
            "passwordpassword",
            "lovelace rules 2024",
            "ACME corp rocks 1",
            // Keyboard walks: rows run together, columns, shifted or not.
            "qwertyuiopasdfgh",
            "asdfghjkl;zx",
            "1qaz2wsx3edc",
            "!QAZ@WSX#EDC",
            "mnbvcxzlkjhg",
            "zaq1xsw2cde3",
        ] {
            assert!(refused(weak), "{weak} passed");
        }
    }

    #[test]
    fn passphrases_and_random_strings_pass() {
        for strong in [
            "correct horse battery staple",
            "tps reports every friday",
            "a brand new passphrase",
            "set by the manager",
            "ada, countess of cicadas",
            // Neighbouring keys, but words: repeats and going back are not walking.
            "assessed desserts",
            "reassessed redress",
            "sassafrasses tree",
            "k8#Vq2!zR9wLm",
            "5821 9034 7716",
            "2024-12-04 12:00",
        ] {
            assert!(!refused(strong), "{strong} refused");
        }
    }
}
