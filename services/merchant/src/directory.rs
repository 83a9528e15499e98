//! The merchant directory: processor descriptors to merchants people recognise.
//!
//! `data/merchants.csv` lists descriptors as processors send them (`PRET A MANGER LONDON GB`).
//! A lookup normalises the descriptor (upper case, single spaces, store numbers dropped), tries
//! an exact match, then the longest known descriptor stem it starts with (the chain, whatever
//! the branch), then falls back to a profile made from the descriptor and the MCC.

use std::collections::HashMap;

use sterling_proto::events::v1::MerchantProfile;

/// The directory shipped with the service.
pub const BUILTIN: &str = include_str!("../data/merchants.csv");

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    category: String,
    mcc: String,
    logo_url: String,
    country: String,
    city: String,
}

/// Descriptor to merchant.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    exact: HashMap<String, Entry>,
    /// Chain stems (descriptor without branch city and country), longest first.
    stems: Vec<(String, Entry)>,
    cities: Vec<String>,
}

/// Upper case, single spaces, no store numbers (`TESCO STORES 3297 LEEDS` -> `TESCO STORES LEEDS`).
pub fn normalise(descriptor: &str) -> String {
    descriptor
        .to_uppercase()
        .split_whitespace()
        .filter(|t| {
            !t.trim_start_matches('#')
                .chars()
                .all(|c| c.is_ascii_digit())
                || t.is_empty()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    fields.push(current);
    fields
}

/// A category for a merchant category code (ISO 18245 ranges).
pub fn category_for_mcc(mcc: &str) -> &'static str {
    let Ok(code) = mcc.parse::<u32>() else {
        return "general";
    };
    match code {
        3000..=3350 | 4511 | 4722 | 7011 | 3501..=3999 => "travel",
        4111..=4131 | 4784 | 5541 | 5542 | 7523 => "transport",
        5411 | 5422 | 5441 | 5451 | 5499 => "groceries",
        5811..=5814 => "eating_out",
        5912 | 7230 | 7298 => "personal_care",
        7832 | 7841 | 7922 | 7991..=7999 | 5815..=5818 | 4899 => "entertainment",
        5200..=5399 | 5600..=5699 | 5700..=5799 | 5900..=5999 => "shopping",
        _ => "general",
    }
}

fn title_case(text: &str) -> String {
    text.split_whitespace()
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Directory {
    /// Parses `descriptor,name,category,mcc,logo_url,country,city` lines.
    pub fn parse(text: &str) -> anyhow::Result<Directory> {
        let mut directory = Directory::default();
        for (n, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let f = split_csv(line);
            anyhow::ensure!(f.len() == 7, "merchants line {}: expected 7 fields", n + 1);
            let entry = Entry {
                name: f[1].clone(),
                category: f[2].clone(),
                mcc: f[3].clone(),
                logo_url: f[4].clone(),
                country: f[5].clone(),
                city: f[6].clone(),
            };
            let descriptor = normalise(&f[0]);
            let city_suffix = format!(" {} {}", entry.city.to_uppercase(), entry.country);
            let stem = descriptor
                .strip_suffix(&city_suffix)
                .unwrap_or(&descriptor)
                .to_string();
            if !directory.cities.contains(&entry.city.to_uppercase()) {
                directory.cities.push(entry.city.to_uppercase());
            }
            if !directory.stems.iter().any(|(s, _)| *s == stem) {
                directory.stems.push((stem, entry.clone()));
            }
            directory.exact.insert(descriptor, entry);
        }
        directory
            .stems
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(directory)
    }

    /// Known descriptors.
    pub fn len(&self) -> usize {
        self.exact.len()
    }

    /// Whether the directory is empty.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }

    /// The merchant behind a descriptor; `country` and `city` as the processor sent them fill
    /// what the directory does not know.
    pub fn lookup(
        &self,
        descriptor: &str,
        mcc: &str,
        country: &str,
        city: &str,
    ) -> MerchantProfile {
        let normalised = normalise(descriptor);
        let profile = |e: &Entry, city: String| MerchantProfile {
            name: e.name.clone(),
            category: e.category.clone(),
            logo_url: e.logo_url.clone(),
            country: e.country.clone(),
            city,
            mcc: if mcc.is_empty() {
                e.mcc.clone()
            } else {
                mcc.to_string()
            },
            descriptor: descriptor.to_string(),
            known: true,
        };
        if let Some(e) = self.exact.get(&normalised) {
            return profile(e, e.city.clone());
        }
        if let Some((stem, e)) = self.stems.iter().find(|(stem, _)| {
            normalised == *stem
                || normalised.starts_with(&format!("{stem} "))
                || (stem.ends_with('*') && normalised.starts_with(stem.as_str()))
        }) {
            let rest = normalised[stem.len()..].trim();
            let branch_city = self
                .cities
                .iter()
                .find(|c| rest.starts_with(c.as_str()))
                .map(|c| title_case(c))
                .unwrap_or_else(|| {
                    if city.is_empty() {
                        e.city.clone()
                    } else {
                        city.to_string()
                    }
                });
            return profile(e, branch_city);
        }
        // Unknown: the descriptor without a trailing country code, the MCC's category.
        let mut words: Vec<&str> = normalised.split(' ').collect();
        if words.len() > 1 && words.last().is_some_and(|w| w.len() == 2) {
            words.pop();
        }
        MerchantProfile {
            name: title_case(&words.join(" ")),
            category: category_for_mcc(mcc).to_string(),
            logo_url: String::new(),
            country: country.to_string(),
            city: city.to_string(),
            mcc: mcc.to_string(),
            descriptor: descriptor.to_string(),
            known: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        Directory::parse(BUILTIN).unwrap()
    }

    #[test]
    fn the_builtin_directory_has_a_few_hundred_merchants() {
        assert!(directory().len() >= 300);
    }

    #[test]
    fn exact_descriptors_match() {
        let m = directory().lookup("PRET A MANGER LONDON GB", "5812", "GB", "London");
        assert!(m.known);
        assert_eq!(m.name, "Pret A Manger");
        assert_eq!(m.category, "eating_out");
        assert_eq!(m.city, "London");
        assert!(m.logo_url.starts_with("https://"));
    }

    #[test]
    fn branches_and_store_numbers_match_their_chain() {
        let d = directory();
        let m = d.lookup("tesco stores 3297   leeds gb", "5411", "GB", "Leeds");
        assert_eq!(m.name, "Tesco");
        assert_eq!(m.city, "Leeds");
        let m = d.lookup("UBER *TRIP HELP.UBER.COM", "4121", "NL", "");
        assert_eq!(m.name, "Uber");
        assert_eq!(m.category, "transport");
        let m = d.lookup("STARBUCKS CARDIFF GB", "5814", "GB", "Cardiff");
        assert_eq!(m.name, "Starbucks");
        assert_eq!(m.city, "Cardiff");
    }

    #[test]
    fn unknown_merchants_fall_back_to_descriptor_and_mcc() {
        let m = directory().lookup("JOES CORNER CAFE BRIGHTON GB", "5812", "GB", "Brighton");
        assert!(!m.known);
        assert_eq!(m.name, "Joes Corner Cafe Brighton");
        assert_eq!(m.category, "eating_out");
        assert_eq!(m.city, "Brighton");
        assert_eq!(category_for_mcc("4111"), "transport");
        assert_eq!(category_for_mcc("nonsense"), "general");
    }
}
