//! The date at the top of make.log, as `date` prints it in the C locale (`Wed Dec  2 04:05:09
//! UTC 2026`), made in-process: always in UTC (dkms shows the build host's zone), and at
//! SOURCE_DATE_EPOCH when that is set, so that a reproducible build's dkms tree is too.

use std::time::{SystemTime, UNIX_EPOCH};

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// SOURCE_DATE_EPOCH, when it is set to a number of seconds.
pub fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse::<i64>().ok())
}

/// The line for now (or SOURCE_DATE_EPOCH), with its newline.
pub fn date_line() -> String {
    let seconds = source_date_epoch().unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    });
    format!("{}\n", format_utc(seconds))
}

/// `date`'s default format for a Unix time, in UTC.
fn format_utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} UTC {year}",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, exact for every i64 day a clock gives).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Against coreutils' date, at dates around leap days, year ends and the epoch.
    #[test]
    fn formats_as_date_does_in_utc() {
        for seconds in [0i64, 951_782_400, 1_709_164_799, 1_764_648_309, 4_102_444_800, -86_401, 1_234_567_890] {
            let date = Command::new("date")
                .args(["-u", "-d", &format!("@{seconds}")])
                .env("LC_ALL", "C")
                .output()
                .expect("date");
            assert_eq!(format_utc(seconds), String::from_utf8_lossy(&date.stdout).trim_end(), "{seconds}");
        }
    }
}
