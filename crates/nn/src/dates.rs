//! A deterministic dataset for sequence-to-sequence training: dates written the many ways people
//! write them, each paired with its ISO 8601 form `YYYY-MM-DD`.
//!
//! The task is small enough to train on the host in minutes, yet it needs what translation needs:
//! reading a variable-length source whose layout varies (month names or numbers, day first or
//! month first, two- or four-digit years, ordinals, weekday names) and writing a fixed-layout
//! target in a different order. Every answer can be checked exactly, so accuracy is a plain
//! string comparison.
//!
//! ## The dates
//!
//! Uniform over the 36 525 days from 1950-01-01 to 2049-12-31 in the proleptic Gregorian calendar
//! (leap years every fourth year except centuries not divisible by 400; in this range that is
//! every fourth year from 1952 to 2048, 2000 included). The range is exactly the one a two-digit
//! year covers when `50`–`99` read as 19xx and `00`–`49` as 20xx, so a source with a two-digit
//! year is as unambiguous as one with four.
//!
//! ## The formats
//!
//! Each pair's format is drawn uniformly from these sixteen, shown for 1999-03-03 (a Wednesday):
//!
//! | # | source | | # | source |
//! |---|---|---|---|---|
//! | 0 | `3rd of March 1999` | | 8 | `3.3.1999` (day.month.year) |
//! | 1 | `March 3, 1999` | | 9 | `1999/03/03` |
//! | 2 | `march 3 99` | | 10 | `19990303` |
//! | 3 | `3 Mar 1999` | | 11 | `03-Mar-1999` |
//! | 4 | `Wed, 3 Mar 1999` | | 12 | `MARCH 3RD, 1999` |
//! | 5 | `Wednesday, March 3, 1999` | | 13 | `3 march 1999` |
//! | 6 | `03/03/99` (US month/day/yy) | | 14 | `3.3.99` (day.month.yy) |
//! | 7 | `03/03/1999` (US month/day/year) | | 15 | `Mar 3, 99` |
//!
//! Ordinals are English: `1st 2nd 3rd 4th … 11th 12th 13th … 21st 22nd 23rd … 31st`. Slashes
//! always mean month/day/year (or year/month/day after a four-digit year) and dots day.month.year,
//! so no source is ambiguous even without knowing its format. Sources and targets are ASCII, so
//! their lengths in characters and in bytes agree; [`source_alphabet`] and [`target_alphabet`]
//! list every character that can occur and [`MAX_SOURCE_LEN`] and [`MAX_TARGET_LEN`] bound the
//! lengths, which is what a model needs to fix its vocabularies and buffers in advance.
//!
//! ## Determinism
//!
//! Draws come from the crate's SplitMix64 generator with integer arithmetic only (uniform
//! integers by rejection), so a seed gives the same pairs on every platform and in every build.
//!
//! ```
//! use rnn_kernels_nn::dates::{self, DatePair};
//!
//! let pairs = dates::generate(7, 1000);
//! assert_eq!(pairs, dates::generate(7, 1000));
//! assert!(pairs.iter().all(|p| p.target.len() == 10 && p.source.len() <= dates::MAX_SOURCE_LEN));
//!
//! let (train, held_out) = dates::train_and_held_out(7, 5000, 500);
//! let seen: std::collections::HashSet<&str> = train.iter().map(|p| p.target.as_str()).collect();
//! assert!(held_out.iter().all(|p: &DatePair| !seen.contains(p.target.as_str())));
//! ```

use crate::rng::SplitMix64;

/// A date as some person wrote it and the same date in ISO 8601.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatePair {
    /// The date in one of the formats of [the module](self), e.g. `3rd of March 1999`.
    pub source: String,
    /// The date as `YYYY-MM-DD`, e.g. `1999-03-03`.
    pub target: String,
}

/// The length of the longest source, in characters (= bytes: sources are ASCII), e.g.
/// `Wednesday, September 22, 1999`; a test checks that it is reached and never exceeded.
pub const MAX_SOURCE_LEN: usize = 29;

/// The length of every target, `YYYY-MM-DD`.
pub const MAX_TARGET_LEN: usize = 10;

/// English month names, January first; formats take their lower and upper case and their first
/// three letters (`Mar`), which are the usual abbreviations of all twelve.
const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

/// English weekday names, Sunday first (weekday 0, as Sakamoto's and most algorithms number them).
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// Days from 1970-01-01 (negative before) to the given date of the proleptic Gregorian calendar,
/// `month` 1–12, by Howard Hinnant's `days_from_civil`: shifting the year to start in March puts
/// the leap day last, so the day of the year is a linear formula in the month.
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400; // [0, 399]
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1; // [0, 365], from 1 March
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year; // [0, 146096]
    era * 146_097 + day_of_era - 719_468
}

/// The first date of the range, in days from 1970-01-01.
const FIRST_DAY: i64 = days_from_civil(1950, 1, 1);

/// The number of days from 1950-01-01 to 2049-12-31 inclusive: 36 525.
const DAYS: u64 = (days_from_civil(2050, 1, 1) - FIRST_DAY) as u64;

/// A day of the calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Date {
    year: i64,
    /// 1–12.
    month: i64,
    /// 1–31.
    day: i64,
    /// 0 = Sunday … 6 = Saturday.
    weekday: usize,
}

impl Date {
    /// The date `days` after 1970-01-01, by Hinnant's `civil_from_days` (the inverse of
    /// [`days_from_civil`]); the weekday counts from 1970-01-01, a Thursday.
    fn from_days(days: i64) -> Self {
        let z = days + 719_468; // from 0000-03-01
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097; // [0, 146096]
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
        let march_month = (5 * day_of_year + 2) / 153; // [0, 11], March = 0
        let day = day_of_year - (153 * march_month + 2) / 5 + 1;
        let month = if march_month < 10 { march_month + 3 } else { march_month - 9 };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Date { year, month, day, weekday: (days + 4).rem_euclid(7) as usize }
    }

    /// The `index`-th day of the range (`index < DAYS`), 0 being 1950-01-01.
    fn nth(index: u64) -> Self {
        Self::from_days(FIRST_DAY + index as i64)
    }

    /// `YYYY-MM-DD`.
    fn iso(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    fn month_name(&self) -> &'static str {
        MONTHS[(self.month - 1) as usize]
    }

    fn month_abbr(&self) -> &'static str {
        &self.month_name()[..3]
    }

    fn weekday_name(&self) -> &'static str {
        WEEKDAYS[self.weekday]
    }

    /// The year's last two digits, `00`–`99`.
    fn yy(&self) -> i64 {
        self.year % 100
    }

    /// The English ordinal suffix of the day: `th` for 11–13, else by the last digit.
    fn suffix(&self) -> &'static str {
        match (self.day % 100, self.day % 10) {
            (11..=13, _) => "th",
            (_, 1) => "st",
            (_, 2) => "nd",
            (_, 3) => "rd",
            _ => "th",
        }
    }
}

/// A source format: its rendering of 1999-03-03 and the function that writes a date in it.
type Format = (&'static str, fn(&Date) -> String);

/// The source formats, in the order of the module's table (a test checks that each writes
/// 1999-03-03 as its example says).
const FORMATS: [Format; 16] = [
    ("3rd of March 1999", |d| format!("{}{} of {} {}", d.day, d.suffix(), d.month_name(), d.year)),
    ("March 3, 1999", |d| format!("{} {}, {}", d.month_name(), d.day, d.year)),
    ("march 3 99", |d| format!("{} {} {:02}", d.month_name().to_lowercase(), d.day, d.yy())),
    ("3 Mar 1999", |d| format!("{} {} {}", d.day, d.month_abbr(), d.year)),
    ("Wed, 3 Mar 1999", |d| format!("{}, {} {} {}", &d.weekday_name()[..3], d.day, d.month_abbr(), d.year)),
    ("Wednesday, March 3, 1999", |d| format!("{}, {} {}, {}", d.weekday_name(), d.month_name(), d.day, d.year)),
    ("03/03/99", |d| format!("{:02}/{:02}/{:02}", d.month, d.day, d.yy())),
    ("03/03/1999", |d| format!("{:02}/{:02}/{}", d.month, d.day, d.year)),
    ("3.3.1999", |d| format!("{}.{}.{}", d.day, d.month, d.year)),
    ("1999/03/03", |d| format!("{}/{:02}/{:02}", d.year, d.month, d.day)),
    ("19990303", |d| format!("{}{:02}{:02}", d.year, d.month, d.day)),
    ("03-Mar-1999", |d| format!("{:02}-{}-{}", d.day, d.month_abbr(), d.year)),
    ("MARCH 3RD, 1999", |d| format!("{} {}{}, {}", d.month_name().to_uppercase(), d.day, d.suffix().to_uppercase(), d.year)),
    ("3 march 1999", |d| format!("{} {} {}", d.day, d.month_name().to_lowercase(), d.year)),
    ("3.3.99", |d| format!("{}.{}.{:02}", d.day, d.month, d.yy())),
    ("Mar 3, 99", |d| format!("{} {}, {:02}", d.month_abbr(), d.day, d.yy())),
];

/// One draw: a day (uniform over the range, or over `pool`'s day indices when given), then a
/// format (uniform), in that order, so the stream of draws depends only on the seed and the pool.
fn draw(rng: &mut SplitMix64, pool: Option<&[u32]>) -> (Date, usize) {
    let index = match pool {
        None => rng.below(DAYS),
        Some(pool) => u64::from(pool[rng.below(pool.len() as u64) as usize]),
    };
    let format = rng.below(FORMATS.len() as u64) as usize;
    (Date::nth(index), format)
}

/// The pair of a date written in a format.
fn pair(date: &Date, format: usize) -> DatePair {
    DatePair { source: (FORMATS[format].1)(date), target: date.iso() }
}

/// `n` pairs from a generator seeded with `seed`: each date uniform over 1950-01-01 to
/// 2049-12-31, each format uniform over the sixteen of [the module](self). The same seed gives the
/// same pairs everywhere; pairs may repeat (there are 36 525 dates in 16 formats).
pub fn generate(seed: u64, n: usize) -> Vec<DatePair> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let (date, format) = draw(&mut rng, None);
            pair(&date, format)
        })
        .collect()
}

/// How many of the calendar's days the held-out pairs get: their share of the pairs, rounded, and
/// at least one day for each side that asks for pairs.
fn held_out_days(n_train: usize, n_held_out: usize) -> usize {
    let days = DAYS as usize;
    if n_held_out == 0 {
        return 0;
    }
    if n_train == 0 {
        return days;
    }
    let (held, total) = (n_held_out as u128, n_train as u128 + n_held_out as u128);
    let share = (DAYS as u128 * held + total / 2) / total;
    (share as usize).clamp(1, days - 1)
}

/// `n_train` training pairs and `n_held_out` held-out pairs, from a generator seeded with `seed`,
/// such that **no held-out date (target) occurs in the training set** in any format: held-out
/// accuracy then measures whether the model learnt to translate, not whether it memorised dates.
///
/// The 36 525 days are shuffled with the seed and cut in two. The held-out pairs draw their dates
/// uniformly from a share of the days proportional to their share of the pairs (rounded; at least
/// one day for each side that asks for pairs, so any sizes work), the training pairs theirs
/// uniformly from the other days; formats are uniform on both sides. Both sides are therefore
/// spread over the whole range of years, months and weekdays. Within one side dates and even pairs
/// may repeat. The result depends on all three arguments: the same seed with other sizes cuts the
/// calendar elsewhere, and the training pairs are not those of [`generate`] with the same seed.
pub fn train_and_held_out(seed: u64, n_train: usize, n_held_out: usize) -> (Vec<DatePair>, Vec<DatePair>) {
    let mut rng = SplitMix64::new(seed);
    // Fisher–Yates, so every cut of the calendar into the two sizes is equally likely.
    let mut days: Vec<u32> = (0..DAYS as u32).collect();
    for i in (1..days.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        days.swap(i, j);
    }
    let (held_out_pool, train_pool) = days.split_at(held_out_days(n_train, n_held_out));
    let mut side = |n: usize, pool: &[u32]| -> Vec<DatePair> {
        (0..n)
            .map(|_| {
                let (date, format) = draw(&mut rng, Some(pool));
                pair(&date, format)
            })
            .collect()
    };
    let train = side(n_train, train_pool);
    let held_out = side(n_held_out, held_out_pool);
    (train, held_out)
}

/// The distinct characters of `text`, sorted.
fn sorted_chars(text: &str) -> Vec<char> {
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    chars
}

/// Every character a source can contain, sorted by code point (ASCII: digits, letters of the
/// month and weekday names and ordinal suffixes in the cases the formats use, space and `,./-`).
/// A test checks that exactly these occur over every date in every format.
pub fn source_alphabet() -> Vec<char> {
    // Digits, the separators, and the `of` of `3rd of March 1999`.
    let mut text = String::from("0123456789 ,./-of");
    for month in MONTHS {
        text += month;
        text += &month.to_lowercase();
        text += &month.to_uppercase();
    }
    for weekday in WEEKDAYS {
        text += weekday;
    }
    for suffix in ["st", "nd", "rd", "th"] {
        text += suffix;
        text += &suffix.to_uppercase();
    }
    sorted_chars(&text)
}

/// Every character a target can contain, sorted: `-` and the digits.
pub fn target_alphabet() -> Vec<char> {
    sorted_chars("0123456789-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    // The checks below use their own calendar, names and parser rather than the module's, so that
    // a mistake in the generator cannot hide behind the same mistake in its test.

    fn is_leap(year: i64) -> bool {
        (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
    }

    fn days_in_month(year: i64, month: i64) -> i64 {
        match month {
            4 | 6 | 9 | 11 => 30,
            2 if is_leap(year) => 29,
            2 => 28,
            _ => 31,
        }
    }

    /// Sakamoto's weekday, 0 = Sunday.
    fn sakamoto(year: i64, month: i64, day: i64) -> usize {
        const T: [i64; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
        let y = if month < 3 { year - 1 } else { year };
        ((y + y / 4 - y / 100 + y / 400 + T[(month - 1) as usize] + day) % 7) as usize
    }

    const NAMES: [&str; 12] =
        ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"];
    const DAY_NAMES: [&str; 7] = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];

    /// Whether a word is written all lower case, all upper case, or capitalised.
    fn plain_case(word: &str) -> bool {
        let rest = &word[1..];
        word == word.to_lowercase() || word == word.to_uppercase() || (word[..1] == word[..1].to_uppercase() && rest == rest.to_lowercase())
    }

    /// The index in `names` of the name `word` spells in full or by its first three letters, in
    /// any plain case.
    fn named(word: &str, names: &[&str]) -> Option<usize> {
        let lower = word.to_lowercase();
        if !plain_case(word) {
            return None;
        }
        names.iter().position(|n| *n == lower || (lower.len() == 3 && n.starts_with(&lower)))
    }

    fn digits(word: &str) -> bool {
        !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit())
    }

    /// A year of two digits (50–99 → 19xx, 00–49 → 20xx) or four.
    fn year(word: &str) -> Option<i64> {
        let v: i64 = word.parse().ok().filter(|_| digits(word))?;
        match word.len() {
            2 if v >= 50 => Some(1900 + v),
            2 => Some(2000 + v),
            4 => Some(v),
            _ => None,
        }
    }

    /// A day of one or two digits, optionally followed by its correct ordinal suffix.
    fn day(word: &str) -> Option<i64> {
        let split = word.find(|c: char| !c.is_ascii_digit()).unwrap_or(word.len());
        let (number, suffix) = word.split_at(split);
        if !digits(number) || number.len() > 2 {
            return None;
        }
        let d: i64 = number.parse().ok()?;
        let want = match d {
            1 | 21 | 31 => "st",
            2 | 22 => "nd",
            3 | 23 => "rd",
            _ => "th",
        };
        (suffix.is_empty() || suffix == want || suffix == want.to_uppercase()).then_some(d)
    }

    /// What a source says, read without knowing its format: year, month, day and the weekday if
    /// it names one.
    fn read_source(source: &str) -> Option<(i64, i64, i64, Option<usize>)> {
        let words: Vec<&str> = source.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
        let separators: String = source.chars().filter(|c| !c.is_ascii_alphanumeric()).collect();
        let number = |w: &str| w.parse::<i64>().ok().filter(|_| digits(w) && w.len() <= 2);
        if words.len() == 1 {
            let w = words[0];
            return (digits(w) && w.len() == 8).then(|| (w[..4].parse().unwrap(), w[4..6].parse().unwrap(), w[6..].parse().unwrap(), None));
        }
        if words.iter().all(|w| digits(w)) {
            if words.len() != 3 {
                return None;
            }
            let (a, b, c) = (words[0], words[1], words[2]);
            return match separators.as_str() {
                "//" if a.len() == 4 => Some((year(a)?, number(b)?, number(c)?, None)),
                "//" => Some((year(c)?, number(a)?, number(b)?, None)),
                ".." => Some((year(c)?, number(b)?, number(a)?, None)),
                _ => None,
            };
        }
        let (mut month, mut weekday, mut numbers) = (None, None, Vec::new());
        for w in words {
            if let Some(m) = named(w, &NAMES) {
                if month.replace(m as i64 + 1).is_some() {
                    return None;
                }
            } else if let Some(d) = named(w, &DAY_NAMES) {
                if weekday.replace(d).is_some() {
                    return None;
                }
            } else if w != "of" {
                numbers.push(w);
            }
        }
        match numbers[..] {
            [d, y] => Some((year(y)?, month?, day(d)?, weekday)),
            _ => None,
        }
    }

    /// A target's date, if it is `YYYY-MM-DD` of a real day in the range.
    fn read_target(target: &str) -> Option<(i64, i64, i64)> {
        let parts: Vec<&str> = target.split('-').collect();
        let [y, m, d] = parts[..] else { return None };
        if target.len() != 10 || y.len() != 4 || m.len() != 2 || d.len() != 2 || !(digits(y) && digits(m) && digits(d)) {
            return None;
        }
        let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
        ((1950..=2049).contains(&y) && (1..=12).contains(&m) && (1..=days_in_month(y, m)).contains(&d)).then_some((y, m, d))
    }

    /// Checks one pair: the target is a real date in the range, the source reads back to it, and
    /// a weekday the source names is that date's.
    fn check(pair: &DatePair) {
        let (y, m, d) = read_target(&pair.target).unwrap_or_else(|| panic!("bad target in {pair:?}"));
        let (sy, sm, sd, weekday) = read_source(&pair.source).unwrap_or_else(|| panic!("unreadable source in {pair:?}"));
        assert_eq!((sy, sm, sd), (y, m, d), "{pair:?}");
        if let Some(w) = weekday {
            assert_eq!(w, sakamoto(y, m, d), "wrong weekday in {pair:?}");
        }
    }

    /// The pairs of `generate(seed, n)` with each one's format.
    fn tagged(seed: u64, n: usize) -> Vec<(DatePair, usize)> {
        let mut rng = SplitMix64::new(seed);
        let tagged: Vec<(DatePair, usize)> = (0..n)
            .map(|_| {
                let (date, format) = draw(&mut rng, None);
                (pair(&date, format), format)
            })
            .collect();
        assert_eq!(tagged.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), generate(seed, n));
        tagged
    }

    fn date(year: i64, month: i64, day: i64) -> Date {
        Date::from_days(days_from_civil(year, month, day))
    }

    #[test]
    fn calendar_matches_a_day_by_day_count_and_known_weekdays() {
        assert_eq!(DAYS, 36_525);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        let (mut y, mut m, mut d) = (1950, 1, 1);
        for index in 0..DAYS {
            let got = Date::nth(index);
            assert_eq!((got.year, got.month, got.day), (y, m, d), "day {index}");
            assert_eq!(got.weekday, sakamoto(y, m, d), "{y}-{m}-{d}");
            assert_eq!(days_from_civil(y, m, d), FIRST_DAY + index as i64);
            d += 1;
            if d > days_in_month(y, m) {
                (d, m) = (1, m + 1);
            }
            if m > 12 {
                (m, y) = (1, y + 1);
            }
        }
        assert_eq!((y, m, d), (2050, 1, 1));
        // Weekdays known from calendars (and `date`), 0 = Sunday.
        for ((year, month, day), weekday) in
            [((1999, 3, 3), 3), ((2000, 2, 29), 2), ((1970, 1, 1), 4), ((1950, 1, 1), 0), ((2049, 12, 31), 5), ((2024, 2, 29), 4)]
        {
            assert_eq!(sakamoto(year, month, day), weekday, "{year}-{month}-{day}");
            assert_eq!(date(year, month, day).weekday, weekday, "{year}-{month}-{day}");
        }
        assert_eq!(date(1999, 3, 3).weekday_name(), "Wednesday");
        assert_eq!(date(2000, 2, 29).weekday_name(), "Tuesday");
        assert_eq!(date(1970, 1, 1).weekday_name(), "Thursday");
    }

    #[test]
    fn formats_write_the_documented_examples() {
        let wednesday = date(1999, 3, 3);
        for (example, write) in FORMATS {
            assert_eq!(write(&wednesday), example);
        }
        let examples: HashSet<&str> = FORMATS.iter().map(|f| f.0).collect();
        assert_eq!(examples.len(), FORMATS.len(), "two formats write 1999-03-03 alike");
        for listed in [
            "3rd of March 1999",
            "March 3, 1999",
            "march 3 99",
            "3 Mar 1999",
            "Wed, 3 Mar 1999",
            "Wednesday, March 3, 1999",
            "03/03/99",
            "03/03/1999",
            "3.3.1999",
            "1999/03/03",
            "19990303",
            "03-Mar-1999",
            "MARCH 3RD, 1999",
            "3 march 1999",
        ] {
            assert!(examples.contains(listed), "{listed}");
        }
        // Fields that differ, two-digit years of both centuries, padding.
        let leap = date(2000, 2, 29);
        let all = |d: &Date| FORMATS.iter().map(|f| f.1(d)).collect::<Vec<_>>();
        assert_eq!(
            all(&leap),
            [
                "29th of February 2000",
                "February 29, 2000",
                "february 29 00",
                "29 Feb 2000",
                "Tue, 29 Feb 2000",
                "Tuesday, February 29, 2000",
                "02/29/00",
                "02/29/2000",
                "29.2.2000",
                "2000/02/29",
                "20000229",
                "29-Feb-2000",
                "FEBRUARY 29TH, 2000",
                "29 february 2000",
                "29.2.00",
                "Feb 29, 00",
            ]
        );
        assert_eq!(FORMATS[6].1(&date(1950, 12, 9)), "12/09/50");
        assert_eq!(FORMATS[14].1(&date(2049, 11, 30)), "30.11.49");
        let ordinals: Vec<String> =
            (1..=31).map(|d| FORMATS[0].1(&date(2001, 1, d))).map(|s| s.split(' ').next().unwrap().to_string()).collect();
        for (d, want) in [
            (1, "1st"),
            (2, "2nd"),
            (3, "3rd"),
            (4, "4th"),
            (11, "11th"),
            (12, "12th"),
            (13, "13th"),
            (21, "21st"),
            (22, "22nd"),
            (23, "23rd"),
            (31, "31st"),
        ] {
            assert_eq!(ordinals[d - 1], want);
        }
        assert_eq!(FORMATS[12].1(&date(2001, 1, 22)), "JANUARY 22ND, 2001");
    }

    #[test]
    fn the_same_seed_gives_the_same_pairs_and_other_seeds_others() {
        let a = generate(42, 500);
        assert_eq!(a.len(), 500);
        assert_eq!(a, generate(42, 500));
        assert_eq!(generate(42, 200)[..], a[..200], "a longer draw extends a shorter one");
        assert_ne!(a, generate(43, 500));
        assert_ne!(a, generate(0, 500));
        assert!(generate(1, 0).is_empty());
        // Pinned, so that a change of the stream (on some platform, in some build, or by an edit
        // of the draw order) is seen: datasets written down elsewhere would no longer match.
        let pinned = |pairs: &[(&str, &str)]| -> Vec<DatePair> {
            pairs.iter().map(|&(s, t)| DatePair { source: s.into(), target: t.into() }).collect()
        };
        assert_eq!(generate(2024, 3), pinned(&[("june 11 68", "1968-06-11"), ("1973/04/06", "1973-04-06"), ("07-Oct-2004", "2004-10-07")]));
        assert_eq!(
            train_and_held_out(5, 2, 2),
            (
                pinned(&[("may 19 41", "2041-05-19"), ("October 7, 2012", "2012-10-07")]),
                pinned(&[("20.2.2012", "2012-02-20"), ("1951/08/01", "1951-08-01")])
            )
        );
        let split = train_and_held_out(5, 300, 40);
        assert_eq!(split, train_and_held_out(5, 300, 40));
        assert_ne!(split, train_and_held_out(6, 300, 40));
    }

    #[test]
    fn targets_are_dates_in_range_that_the_sources_say() {
        for seed in 0..5 {
            for p in generate(seed, 4000) {
                check(&p);
            }
        }
        // The reader itself: hand-written sources and a few it must refuse.
        assert_eq!(read_source("Wed, 3 Mar 1999"), Some((1999, 3, 3, Some(3))));
        assert_eq!(read_source("01/02/03"), Some((2003, 1, 2, None)));
        assert_eq!(read_source("1.2.03"), Some((2003, 2, 1, None)));
        assert_eq!(read_source("3st of March 1999"), None);
        assert_eq!(read_source("3 mArch 1999"), None);
        assert_eq!(read_target("1999-02-29"), None);
        assert_eq!(read_target("2050-01-01"), None);
        assert_eq!(read_target("2000-02-29"), Some((2000, 2, 29)));
    }

    #[test]
    fn every_date_in_every_format_reads_back_within_the_alphabets_and_maxima() {
        let (source_alphabet, target_alphabet) = (source_alphabet(), target_alphabet());
        for alphabet in [&source_alphabet, &target_alphabet] {
            assert!(alphabet.windows(2).all(|w| w[0] < w[1]), "sorted without repeats: {alphabet:?}");
        }
        let (mut source_chars, mut target_chars) = (HashSet::new(), HashSet::new());
        let (mut longest_source, mut longest_target) = (0, 0);
        let mut sources = HashSet::new();
        for index in 0..DAYS {
            let date = Date::nth(index);
            for format in 0..FORMATS.len() {
                let p = pair(&date, format);
                check(&p);
                source_chars.extend(p.source.chars());
                target_chars.extend(p.target.chars());
                longest_source = longest_source.max(p.source.chars().count());
                longest_target = longest_target.max(p.target.chars().count());
                assert!(sources.insert(p.source), "a source written twice");
            }
        }
        let sorted = |set: HashSet<char>| {
            let mut v: Vec<char> = set.into_iter().collect();
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(source_chars), source_alphabet, "the source alphabet is exactly what occurs");
        assert_eq!(sorted(target_chars), target_alphabet, "the target alphabet is exactly what occurs");
        assert!(source_alphabet.iter().chain(&target_alphabet).all(char::is_ascii));
        assert_eq!(longest_source, MAX_SOURCE_LEN);
        assert_eq!(longest_target, MAX_TARGET_LEN);
        assert_eq!(FORMATS[5].1(&date(1999, 9, 22)).len(), MAX_SOURCE_LEN);
    }

    #[test]
    fn every_format_appears_in_a_draw_of_2000() {
        let mut counts = [0usize; FORMATS.len()];
        for (_, format) in tagged(11, 2000) {
            counts[format] += 1;
        }
        // Each is expected 125 times; 60 is more than six standard deviations below.
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    }

    #[test]
    fn leap_days_appear_and_only_in_leap_years() {
        let pairs = generate(3, 30_000);
        let leap_days: Vec<&DatePair> = pairs.iter().filter(|p| p.target.ends_with("-02-29")).collect();
        // 25 of the 36 525 days: about 20 expected.
        assert!(!leap_days.is_empty());
        for p in leap_days {
            assert!(is_leap(p.target[..4].parse().unwrap()), "{p:?}");
            check(p);
        }
        let years_with_29_feb: Vec<i64> = (0..DAYS).map(Date::nth).filter(|d| (d.month, d.day) == (2, 29)).map(|d| d.year).collect();
        assert_eq!(years_with_29_feb, (1952..=2048).step_by(4).collect::<Vec<i64>>());
        assert!(years_with_29_feb.contains(&2000));
    }

    #[test]
    fn held_out_dates_never_occur_in_training() {
        for (seed, n_train, n_held_out) in [(1, 20_000, 2_000), (2, 1_000, 1_000), (3, 50, 100_000), (4, 100_000, 1), (5, 1, 1)] {
            let (train, held_out) = train_and_held_out(seed, n_train, n_held_out);
            assert_eq!((train.len(), held_out.len()), (n_train, n_held_out));
            let seen: HashSet<&str> = train.iter().map(|p| p.target.as_str()).collect();
            assert!(held_out.iter().all(|p| !seen.contains(p.target.as_str())), "seed {seed}");
            for p in train.iter().chain(&held_out) {
                check(p);
            }
            // The held-out side gets its share of the calendar, not a handful of days.
            let held_out_dates: HashSet<&str> = held_out.iter().map(|p| p.target.as_str()).collect();
            let share = DAYS as usize * n_held_out / (n_train + n_held_out);
            assert!(held_out_dates.len() >= n_held_out.min(share) / 2, "seed {seed}: {} dates", held_out_dates.len());
        }
        let (train, held_out) = train_and_held_out(9, 0, 0);
        assert!(train.is_empty() && held_out.is_empty());
        let (train, held_out) = train_and_held_out(9, 0, 10);
        assert!(train.is_empty() && held_out.len() == 10);
        let (train, held_out) = train_and_held_out(9, 10, 0);
        assert!(train.len() == 10 && held_out.is_empty());
        assert_eq!(held_out_days(1, 1), 18_263);
        assert_eq!(held_out_days(1, usize::MAX), DAYS as usize - 1);
        assert_eq!(held_out_days(usize::MAX, 1), 1);
    }
}
