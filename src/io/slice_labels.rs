//! Slice-level labels ("this axial slice shows bleeding") from CSV files, for pseudo-labelling.
//!
//! Two layouts are read, told apart by the header (column order is free, extra columns are
//! ignored, blank lines and surrounding spaces or double quotes are tolerated):
//!
//! - **Simple**, one volume: header `slice,label`; `slice` is the 0-based axial index `z` (the
//!   NIfTI `k` index), `label` is `1` (bleeding) or `0`.
//! - **BCIHM** (PhysioNet ct-ich `hemorrhage_diagnosis_raw_ct.csv`, METHOD.md section 9): columns
//!   `PatientNumber`, `SliceNumber` (1-based) and `No_Hemorrhage` (0 = bleeding, 1 = none); any
//!   number of patients.
//!
//! Every slice of a volume must be labelled exactly once.
//!
//! ```
//! use ichseg::io::slice_labels::SliceLabelTable;
//! # fn main() -> ichseg::Result<()> {
//! let table = SliceLabelTable::parse("slice,label\n0,0\n1,1\n2,1\n", "labels.csv".as_ref())?;
//! assert_eq!(table.labels(None, 3)?, [false, true, true]);
//! let bcihm = "PatientNumber,SliceNumber,No_Hemorrhage\n49,1,1\n49,2,0\n50,1,0\n";
//! let table = SliceLabelTable::parse(bcihm, "hemorrhage_diagnosis_raw_ct.csv".as_ref())?;
//! assert_eq!(table.patients(), [49, 50]);
//! assert_eq!(table.labels(Some(49), 2)?, [false, true]);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Slice labels of one or more volumes, as read from a CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceLabelTable {
    source: PathBuf,
    /// `None` for the simple (one-volume) layout, else the BCIHM patient number.
    volumes: BTreeMap<Option<u32>, BTreeMap<usize, bool>>,
}

/// Which layout a header announces, with the column indices it needs.
enum Layout {
    Simple { slice: usize, label: usize },
    Bcihm { patient: usize, slice: usize, no_hemorrhage: usize },
}

impl SliceLabelTable {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses CSV text; `source` names the file in messages.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the file and line for an unknown header, a short line,
    /// a value that is not a number (or not 0/1), or a slice labelled twice.
    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let bad = |line: usize, msg: String| Error::arg(format!("{} line {}: {msg}", source.display(), line + 1));
        let (header_line, header) =
            lines.next().ok_or_else(|| Error::arg(format!("{}: empty label file", source.display())))?;
        let columns: Vec<String> = split(header).map(str::to_string).collect();
        let layout = layout(&columns).ok_or_else(|| {
            bad(
                header_line,
                format!(
                    "unknown header {header:?}: expected `slice,label` (0-based slice, 0/1) or the BCIHM columns PatientNumber,SliceNumber,No_Hemorrhage"
                ),
            )
        })?;
        let mut volumes: BTreeMap<Option<u32>, BTreeMap<usize, bool>> = BTreeMap::new();
        for (n, line) in lines {
            let fields: Vec<&str> = split(line).collect();
            let field = |i: usize| {
                fields.get(i).copied().ok_or_else(|| {
                    bad(n, format!("{} field(s), the header has {}: {line:?}", fields.len(), columns.len()))
                })
            };
            let int = |i: usize| -> Result<u64> {
                let v = field(i)?;
                v.parse().map_err(|_| bad(n, format!("{} = {v:?} is not a whole number >= 0", columns[i])))
            };
            let flag = |i: usize| -> Result<bool> {
                match int(i)? {
                    0 => Ok(false),
                    1 => Ok(true),
                    v => Err(bad(n, format!("{} = {v}: expected 0 or 1", columns[i]))),
                }
            };
            let (volume, z, bleeding) = match layout {
                Layout::Simple { slice, label } => (None, int(slice)?, flag(label)?),
                Layout::Bcihm { patient, slice, no_hemorrhage } => {
                    let p = u32::try_from(int(patient)?).map_err(|_| bad(n, "PatientNumber is too large".into()))?;
                    let s = int(slice)?;
                    if s == 0 {
                        return Err(bad(n, "SliceNumber is 1-based; 0 is not a slice".into()));
                    }
                    (Some(p), s - 1, !flag(no_hemorrhage)?)
                }
            };
            let z = usize::try_from(z).map_err(|_| bad(n, "slice number is too large".into()))?;
            if volumes.entry(volume).or_default().insert(z, bleeding).is_some() {
                let who = volume.map_or(String::new(), |p| format!(" of patient {p}"));
                return Err(bad(n, format!("slice {z}{who} is labelled twice (0-based)")));
            }
        }
        Ok(SliceLabelTable { source: source.to_path_buf(), volumes })
    }

    /// The BCIHM patient numbers present (empty for the simple layout).
    pub fn patients(&self) -> Vec<u32> {
        self.volumes.keys().filter_map(|p| *p).collect()
    }

    /// The labels of one volume of `nz` slices, `true` = bleeding, in slice order. `patient`
    /// picks the volume in a BCIHM table; it may be `None` when the table holds one volume.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the volume is not in the table, a slice is missing, or a
    /// labelled slice lies beyond `nz`.
    pub fn labels(&self, patient: Option<u32>, nz: usize) -> Result<Vec<bool>> {
        let src = self.source.display();
        let slices = match (patient, self.volumes.len()) {
            (_, 1) if self.volumes.contains_key(&None) => &self.volumes[&None],
            (None, 1) => self.volumes.values().next().expect("one volume"),
            (None, n) => {
                return Err(Error::arg(format!(
                    "{src} holds slice labels for {n} patients; say which (the scan's file name NNN.nii[.gz], or --patient)"
                )))
            }
            (Some(p), _) => {
                self.volumes.get(&Some(p)).ok_or_else(|| Error::arg(format!("{src} has no slice labels for patient {p}")))?
            }
        };
        let who = patient.map_or(String::new(), |p| format!(" for patient {p}"));
        if let Some((&z, _)) = slices.range(nz..).next() {
            return Err(Error::arg(format!("{src} labels slice {z} (0-based){who} but the volume has {nz} slice(s)")));
        }
        (0..nz)
            .map(|z| {
                slices.get(&z).copied().ok_or_else(|| {
                    Error::arg(format!("{src} has no label for slice {z} (0-based){who}; every slice needs one"))
                })
            })
            .collect()
    }
}

/// Comma-separated fields, trimmed, surrounding double quotes removed.
fn split(line: &str) -> impl Iterator<Item = &str> {
    line.split(',').map(|f| f.trim().trim_matches('"').trim())
}

fn layout(columns: &[String]) -> Option<Layout> {
    let find = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
    if let (Some(patient), Some(slice), Some(no_hemorrhage)) =
        (find("PatientNumber"), find("SliceNumber"), find("No_Hemorrhage"))
    {
        return Some(Layout::Bcihm { patient, slice, no_hemorrhage });
    }
    Some(Layout::Simple { slice: find("slice")?, label: find("label")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SliceLabelTable> {
        SliceLabelTable::parse(text, Path::new("l.csv"))
    }

    #[test]
    fn simple_layout_any_order_with_blank_lines_and_quotes() {
        let t = parse("\"label\", \"slice\"\r\n1,2\r\n\r\n0,0\r\n0,1\r\n").unwrap();
        assert_eq!(t.labels(None, 3).unwrap(), [false, false, true]);
        assert_eq!(t.labels(Some(7), 3).unwrap(), [false, false, true], "the patient is irrelevant");
        assert!(t.patients().is_empty());
    }

    #[test]
    fn bcihm_layout_with_all_its_columns() {
        let text = "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,No_Hemorrhage,Fracture_Yes_No\n\
                    49,1,0,0,0,0,0,1,0\n49,2,0,1,0,0,0,0,0\n50,2,0,0,0,0,0,1,0\n50,1,0,0,0,0,1,0,1\n";
        let t = parse(text).unwrap();
        assert_eq!(t.patients(), [49, 50]);
        assert_eq!(t.labels(Some(50), 2).unwrap(), [true, false]);
        let err = t.labels(None, 2).unwrap_err().to_string();
        assert!(err.contains("2 patients"), "{err}");
        assert!(t.labels(Some(51), 2).unwrap_err().to_string().contains("no slice labels for patient 51"));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("", "empty label file"),
            ("a,b\n0,1\n", "line 1: unknown header"),
            ("slice,label\n0,1\n1\n", "line 3: 1 field(s)"),
            ("slice,label\n0,1\nx,1\n", "line 3: slice = \"x\""),
            ("slice,label\n0,2\n", "line 2: label = 2: expected 0 or 1"),
            ("slice,label\n0,1\n0,0\n", "line 3: slice 0 is labelled twice"),
            ("PatientNumber,SliceNumber,No_Hemorrhage\n1,0,1\n", "line 2: SliceNumber is 1-based"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("l.csv"), "{text:?}: {err}");
        }
    }

    #[test]
    fn every_slice_needs_exactly_one_label() {
        let t = parse("slice,label\n0,1\n2,1\n").unwrap();
        assert!(t.labels(None, 3).unwrap_err().to_string().contains("no label for slice 1"));
        assert!(t.labels(None, 2).unwrap_err().to_string().contains("labels slice 2 (0-based)"));
    }
}
