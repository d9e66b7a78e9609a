//! Initial IAM console passwords: random, and valid under AWS's default password policy.

use rand::RngExt;
use rand::seq::SliceRandom;
use secrecy::SecretString;

const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const DIGITS: &[u8] = b"23456789";
/// A subset of the symbols AWS's password policy counts, without quotes and look-alikes.
const SYMBOLS: &[u8] = b"!@#$%^&*()_+-=[]{}";
/// Length of a generated password (AWS's default policy asks for at least 8).
pub const PASSWORD_LENGTH: usize = 24;

/// A new password from the thread-local CSPRNG (ChaCha, seeded from the operating system):
/// 24 characters with at least one upper-case letter, lower-case letter, digit and symbol.
pub fn generate() -> SecretString {
    let mut rng = rand::rng();
    let all: Vec<u8> = [UPPER, LOWER, DIGITS, SYMBOLS].concat();
    let mut chars: Vec<u8> = [UPPER, LOWER, DIGITS, SYMBOLS]
        .iter()
        .map(|class| class[rng.random_range(0..class.len())])
        .collect();
    while chars.len() < PASSWORD_LENGTH {
        chars.push(all[rng.random_range(0..all.len())]);
    }
    chars.shuffle(&mut rng);
    SecretString::from(chars.into_iter().map(char::from).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn passwords_meet_the_policy_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let password = generate();
            let p = password.expose_secret();
            assert_eq!(p.len(), PASSWORD_LENGTH);
            for class in [UPPER, LOWER, DIGITS, SYMBOLS] {
                assert!(p.bytes().any(|b| class.contains(&b)), "{class:?} missing");
            }
            assert!(seen.insert(p.to_owned()), "repeated password");
        }
    }

    #[test]
    fn passwords_do_not_print() {
        let password = generate();
        assert!(!format!("{password:?}").contains(password.expose_secret()));
    }
}
