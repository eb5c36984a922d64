//! Target IDs and the code object a device runs, chosen as the HIP runtime
//! chooses it: the processor must be the device's, each feature the entry
//! names (`xnack+`, `sramecc-`) must be the device's setting, a feature it does
//! not name may be either, and the first such entry wins.

use crate::{AmdgpuError, BundleEntry};

/// A target ID: a processor and the features it is built with or without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetId {
    /// `gfx90a`.
    pub processor: String,
    /// `(feature, on)`, as written: `xnack+` is `("xnack", true)`.
    pub features: Vec<(String, bool)>,
}

impl TargetId {
    /// `None` for text that is not one (a feature without `+` or `-`).
    pub fn parse(text: &str) -> Option<TargetId> {
        let mut parts = text.split(':');
        let processor = parts.next().filter(|p| !p.is_empty())?.to_owned();
        let features = parts
            .map(|f| {
                let (name, on) = match (f.strip_suffix('+'), f.strip_suffix('-')) {
                    (Some(name), _) => (name, true),
                    (_, Some(name)) => (name, false),
                    _ => return None,
                };
                (!name.is_empty()).then(|| (name.to_owned(), on))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(TargetId {
            processor,
            features,
        })
    }

    /// Whether code built for `self` runs on a device whose target ID is `device`.
    pub fn runs_on(&self, device: &TargetId) -> bool {
        self.processor == device.processor
            && self.features.iter().all(|(name, on)| {
                device
                    .features
                    .iter()
                    .find(|(n, _)| n == name)
                    // A device that does not say has the feature either way.
                    .is_none_or(|(_, device_on)| device_on == on)
            })
    }
}

/// Whether an entry's kind holds an AMD GPU code object.
fn is_code_object(entry: &BundleEntry) -> bool {
    matches!(entry.kind(), "hipv4" | "hip" | "hcc")
}

/// The first entry of `entries` a device with target ID `device` can run.
pub fn code_object_for<'a>(
    entries: &'a [BundleEntry],
    device: &str,
) -> Result<&'a BundleEntry, AmdgpuError> {
    let wanted = TargetId::parse(device);
    entries
        .iter()
        .filter(|e| is_code_object(e))
        .find(|e| {
            let target = e.target().and_then(TargetId::parse);
            matches!((target, &wanted), (Some(t), Some(w)) if t.runs_on(w))
        })
        .ok_or_else(|| AmdgpuError::NoBinaryForDevice {
            device: device.to_owned(),
            offered: entries
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> BundleEntry {
        BundleEntry {
            id: id.to_owned(),
            data: id.as_bytes().to_vec(),
        }
    }

    #[test]
    fn target_ids_parse_and_bad_ones_do_not() {
        let t = TargetId::parse("gfx90a:sramecc+:xnack-").unwrap();
        assert_eq!(t.processor, "gfx90a");
        assert_eq!(
            t.features,
            [("sramecc".to_owned(), true), ("xnack".to_owned(), false)]
        );
        for bad in [
            "",
            ":xnack+",
            "gfx90a:xnack",
            "gfx90a:+",
            "gfx90a:xnack*",
            "gfx90a:xé",
        ] {
            assert_eq!(TargetId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_first_entry_the_device_runs_is_chosen() {
        let entries = [
            entry("host-x86_64-unknown-linux"),
            entry("hipv4-amdgcn-amd-amdhsa--gfx1030"),
            entry("hipv4-amdgcn-amd-amdhsa--gfx90a:xnack+"),
            entry("hipv4-amdgcn-amd-amdhsa--gfx90a:xnack-"),
            entry("hipv4-amdgcn-amd-amdhsa--gfx90a"),
        ];
        let chosen = |device| code_object_for(&entries, device).map(|e| e.id.as_str());
        assert_eq!(
            chosen("gfx90a:sramecc+:xnack-"),
            Ok("hipv4-amdgcn-amd-amdhsa--gfx90a:xnack-")
        );
        assert_eq!(
            chosen("gfx90a:xnack+"),
            Ok("hipv4-amdgcn-amd-amdhsa--gfx90a:xnack+")
        );
        // A device that does not say takes the first gfx90a entry.
        assert_eq!(
            chosen("gfx90a"),
            Ok("hipv4-amdgcn-amd-amdhsa--gfx90a:xnack+")
        );
        assert_eq!(chosen("gfx1030"), Ok("hipv4-amdgcn-amd-amdhsa--gfx1030"));
        let none = code_object_for(&entries, "gfx908").unwrap_err();
        assert!(none.to_string().contains("gfx908"), "{none}");
        assert!(none.to_string().contains("gfx1030"), "{none}");
        // The host entry is never a device's, whatever its id says.
        let only_host = [entry("host-x86_64-unknown-linux--gfx90a")];
        assert!(code_object_for(&only_host, "gfx90a").is_err());
    }
}
