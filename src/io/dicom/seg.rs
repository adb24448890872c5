//! Writing a DICOM Segmentation (Segmentation Storage, PS3.3 A.51) of one "Hemorrhage" segment
//! on the source series' grid: a BINARY mask, or the bleed probability as FRACTIONAL.
//! docs/DICOM.md lists what goes in and how readers were checked against it.

use super::uid::{new_uid, now_date_time};
use super::SourceSeries;
use crate::error::{Error, Result};
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use ndarray::{Array3, ArrayView2, Axis};
use std::path::Path;

/// Segmentation Storage.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
/// Largest value of a FRACTIONAL frame: probability 1.
pub const MAX_FRACTIONAL_VALUE: u8 = 255;

/// The segment's display colour, red, as DICOM scaled CIELab (L* 53, a* 80, b* 67).
const RED_CIELAB: [u16; 3] = [34_734, 53_456, 50_115];

/// What made the segmentation, recorded in the segment's description.
#[derive(Debug, Clone, Default)]
pub struct Algorithm {
    /// The model's name (its file stem, or its graph name).
    pub name: String,
    /// The model's `ichseg.trained_on` metadata, when it has one.
    pub trained_on: Option<String>,
}

/// The segment's content.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// A 0/1 mask, shape `[nz, ny, nx]` on the source grid: a BINARY segmentation.
    Binary(&'a Array3<u8>),
    /// Bleed probabilities in [0, 1], the same shape: a FRACTIONAL (PROBABILITY) segmentation
    /// quantised to 0..=[`MAX_FRACTIONAL_VALUE`].
    Fractional(&'a Array3<f32>),
}

impl Content<'_> {
    fn shape(&self) -> (usize, usize, usize) {
        match self {
            Content::Binary(m) => m.dim(),
            Content::Fractional(p) => p.dim(),
        }
    }
}

/// The Segmentation object as the bytes of a DICOM file (what a PACS plugin stores).
pub fn to_bytes(source: &SourceSeries, content: Content<'_>, algorithm: &Algorithm) -> Result<Vec<u8>> {
    let object = build(source, content, algorithm)?;
    let file = object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| Error::arg(format!("DICOM-SEG file meta: {e}")))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| Error::arg(format!("encoding the DICOM-SEG: {e}")))?;
    Ok(bytes)
}

/// Writes the Segmentation object to `path`, atomically (no partial file on failure).
pub fn write(path: &Path, source: &SourceSeries, content: Content<'_>, algorithm: &Algorithm) -> Result<()> {
    let bytes = to_bytes(source, content, algorithm)?;
    crate::io::atomic::write_atomic(path, |w| w.write_all(&bytes).map_err(|e| Error::io(path, e)))
}

fn text(tag: Tag, vr: VR, value: &str) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}
fn texts(tag: Tag, vr: VR, values: Vec<String>) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::Strs(values.into()))
}
fn us(tag: Tag, value: u16) -> InMemElement {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}
fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}
fn item(elements: Vec<InMemElement>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}
fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(vec![
        text(tags::CODE_VALUE, VR::SH, value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        text(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// A decimal string of at most 16 characters (the DS limit) as close to `v` as fits.
fn ds(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
    let plain = format!("{v}");
    if plain.len() <= 16 {
        return plain;
    }
    (0..=15)
        .rev()
        .map(|decimals| format!("{v:.decimals$}"))
        .find(|s| s.len() <= 16)
        .unwrap_or_else(|| format!("{v:.6e}"))
}
fn ds_all(values: &[f64]) -> Vec<String> {
    values.iter().map(|&v| ds(v)).collect()
}

/// One frame's pixels: packed bits (BINARY) or bytes (FRACTIONAL), and whether any is set.
fn frame_pixels(content: Content<'_>, k: usize) -> (Vec<u8>, bool) {
    match content {
        Content::Binary(mask) => {
            let slice: ArrayView2<u8> = mask.index_axis(Axis(0), k);
            let bits: Vec<bool> = slice.iter().map(|&v| v != 0).collect();
            let any = bits.iter().any(|&b| b);
            let mut bytes = vec![0u8; bits.len().div_ceil(8)];
            for (i, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
                bytes[i / 8] |= 1 << (i % 8);
            }
            (bytes, any)
        }
        Content::Fractional(prob) => {
            let bytes: Vec<u8> = prob
                .index_axis(Axis(0), k)
                .iter()
                .map(|&p| (p.clamp(0.0, 1.0) * f32::from(MAX_FRACTIONAL_VALUE)).round() as u8)
                .collect();
            let any = bytes.iter().any(|&b| b != 0);
            (bytes, any)
        }
    }
}

fn build(source: &SourceSeries, content: Content<'_>, algorithm: &Algorithm) -> Result<InMemDicomObject> {
    let (nz, ny, nx) = content.shape();
    if nz != source.instances.len() || (ny, nx) != (source.rows, source.columns) {
        return Err(Error::arg(format!(
            "a {nx}x{ny}x{nz} mask does not lie on the source series' {}x{}x{} grid",
            source.columns,
            source.rows,
            source.instances.len()
        )));
    }
    if let Content::Fractional(p) = content {
        if let Some(bad) = p.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(Error::arg(format!("probabilities must lie in [0, 1], found {bad}")));
        }
    }
    // Frames for the slices with foreground; an empty mask keeps one empty frame (a
    // Segmentation has at least one frame) on the first slice.
    let mut frames: Vec<(usize, Vec<u8>)> = (0..nz)
        .map(|k| (k, frame_pixels(content, k)))
        .filter(|(_, (_, any))| *any)
        .map(|(k, (px, _))| (k, px))
        .collect();
    if frames.is_empty() {
        frames.push((0, frame_pixels(content, 0).0));
    }
    let binary = matches!(content, Content::Binary(_));
    let mut pixel_data: Vec<u8> = if binary {
        // BINARY frames are packed back to back, bit after bit, not padded to bytes per frame.
        let per_frame = nx * ny;
        let mut packed = vec![0u8; (per_frame * frames.len()).div_ceil(8)];
        for (f, (k, _)) in frames.iter().enumerate() {
            let Content::Binary(mask) = content else { unreachable!() };
            for (i, &v) in mask.index_axis(Axis(0), *k).iter().enumerate() {
                if v != 0 {
                    let bit = f * per_frame + i;
                    packed[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        packed
    } else {
        frames.iter().flat_map(|(_, px)| px.iter().copied()).collect()
    };
    if pixel_data.len() % 2 == 1 {
        pixel_data.push(0);
    }

    let (date, time) = now_date_time();
    let dimension_uid = new_uid();
    let instance_uid = new_uid();
    let version = env!("CARGO_PKG_VERSION");
    let mut obj = InMemDicomObject::new_empty();
    for e in &source.copied {
        obj.put(e.clone());
    }
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
        (tags::POSITION_REFERENCE_INDICATOR, VR::LO),
    ] {
        // Type 2: present, empty when the source had none.
        if obj.element_opt(tag).ok().flatten().is_none() {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
        }
    }
    for required in [tags::STUDY_INSTANCE_UID, tags::FRAME_OF_REFERENCE_UID] {
        if obj.element_opt(required).ok().flatten().is_none() {
            return Err(Error::image(
                &source.instances[0].path,
                format!(
                    "the source lacks {}: a Segmentation cannot reference it",
                    if required == tags::STUDY_INSTANCE_UID { "StudyInstanceUID" } else { "FrameOfReferenceUID" }
                ),
            ));
        }
    }
    let description = match &algorithm.trained_on {
        Some(t) => format!("model {} trained on {t}", algorithm.name),
        None => format!("model {}", algorithm.name),
    };
    let mut segment = vec![
        us(tags::SEGMENT_NUMBER, 1),
        text(tags::SEGMENT_LABEL, VR::LO, "Hemorrhage"),
        text(tags::SEGMENT_DESCRIPTION, VR::ST, &description),
        sequence(
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            vec![code("49755003", "SCT", "Morphologically abnormal structure")],
        ),
        sequence(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![code("50960005", "SCT", "Hemorrhage")]),
        text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        text(tags::SEGMENT_ALGORITHM_NAME, VR::LO, &format!("ichseg {version} {}", algorithm.name)),
        DataElement::new(tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE, VR::US, PrimitiveValue::U16(RED_CIELAB[..].into())),
    ];
    segment.push(sequence(
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        vec![item(vec![
            sequence(tags::ALGORITHM_FAMILY_CODE_SEQUENCE, vec![code("123110", "DCM", "Artificial Intelligence")]),
            text(tags::ALGORITHM_NAME, VR::LO, &format!("ichseg {}", algorithm.name)),
            text(tags::ALGORITHM_VERSION, VR::LO, version),
            text(tags::ALGORITHM_PARAMETERS, VR::LT, &description),
        ])],
    ));

    let mut elements = vec![
        text(tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &instance_uid),
        text(tags::MODALITY, VR::CS, "SEG"),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &new_uid()),
        text(tags::SERIES_NUMBER, VR::IS, "9901"),
        text(tags::SERIES_DESCRIPTION, VR::LO, "ichseg hemorrhage"),
        text(tags::SERIES_DATE, VR::DA, &date),
        text(tags::SERIES_TIME, VR::TM, &time),
        text(tags::INSTANCE_NUMBER, VR::IS, "1"),
        text(tags::CONTENT_DATE, VR::DA, &date),
        text(tags::CONTENT_TIME, VR::TM, &time),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, &date),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, &time),
        text(tags::CONTENT_LABEL, VR::CS, "HEMORRHAGE"),
        text(tags::CONTENT_DESCRIPTION, VR::LO, "Intracerebral hemorrhage"),
        DataElement::new(tags::CONTENT_CREATOR_NAME, VR::PN, PrimitiveValue::Empty),
        text(tags::MANUFACTURER, VR::LO, "libichseg"),
        text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "ichseg"),
        text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "0"),
        text(tags::SOFTWARE_VERSIONS, VR::LO, version),
        texts(tags::IMAGE_TYPE, VR::CS, vec!["DERIVED".into(), "PRIMARY".into()]),
        text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, ny as u16),
        us(tags::COLUMNS, nx as u16),
        us(tags::BITS_ALLOCATED, if binary { 1 } else { 8 }),
        us(tags::BITS_STORED, if binary { 1 } else { 8 }),
        us(tags::HIGH_BIT, if binary { 0 } else { 7 }),
        us(tags::PIXEL_REPRESENTATION, 0),
        text(tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string()),
        text(tags::SEGMENTATION_TYPE, VR::CS, if binary { "BINARY" } else { "FRACTIONAL" }),
        sequence(tags::SEGMENT_SEQUENCE, vec![item(segment)]),
    ];
    if !binary {
        elements.push(text(tags::SEGMENTATION_FRACTIONAL_TYPE, VR::CS, "PROBABILITY"));
        elements.push(us(tags::MAXIMUM_FRACTIONAL_VALUE, u16::from(MAX_FRACTIONAL_VALUE)));
    }
    if ny > usize::from(u16::MAX) || nx > usize::from(u16::MAX) {
        return Err(Error::arg(format!("{nx}x{ny} slices exceed DICOM's 65535 rows or columns")));
    }

    // Common Instance Reference: every source instance.
    let referenced_instances = source
        .instances
        .iter()
        .map(|i| {
            item(vec![
                text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &i.sop_class_uid),
                text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &i.sop_instance_uid),
            ])
        })
        .collect();
    elements.push(sequence(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![item(vec![
            text(tags::SERIES_INSTANCE_UID, VR::UI, &source.series_uid),
            sequence(tags::REFERENCED_INSTANCE_SEQUENCE, referenced_instances),
        ])],
    ));

    // Multi-frame Dimension: frames indexed by segment, then by position along the normal.
    let dimension = |pointer: Tag, group: Tag, label: &str| {
        item(vec![
            DataElement::new(tags::DIMENSION_INDEX_POINTER, VR::AT, PrimitiveValue::Tags([pointer][..].into())),
            DataElement::new(tags::FUNCTIONAL_GROUP_POINTER, VR::AT, PrimitiveValue::Tags([group][..].into())),
            text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimension_uid),
            text(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    elements.push(sequence(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![item(vec![text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimension_uid)])],
    ));
    elements.push(text(tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D"));
    elements.push(sequence(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "ReferencedSegmentNumber",
            ),
            dimension(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE, "ImagePositionPatient"),
        ],
    ));

    // Shared functional groups: the source's pixel measures and orientation.
    let [dr, dc] = source.pixel_spacing;
    elements.push(sequence(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![item(vec![
            sequence(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(vec![
                    texts(tags::PIXEL_SPACING, VR::DS, ds_all(&[dr, dc])),
                    text(tags::SLICE_THICKNESS, VR::DS, &ds(source.slice_spacing)),
                    text(tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(source.slice_spacing)),
                ])],
            ),
            sequence(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(vec![texts(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds_all(&source.orientation))])],
            ),
        ])],
    ));

    // Per frame: the source image it derives from, its position and its segment.
    let per_frame = frames
        .iter()
        .map(|(k, _)| {
            let instance = &source.instances[*k];
            item(vec![
                sequence(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![item(vec![
                        sequence(
                            tags::SOURCE_IMAGE_SEQUENCE,
                            vec![item(vec![
                                text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &instance.sop_class_uid),
                                text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &instance.sop_instance_uid),
                                text(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"),
                                sequence(
                                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                                    vec![code("121322", "DCM", "Source image for image processing operation")],
                                ),
                            ])],
                        ),
                        sequence(tags::DERIVATION_CODE_SEQUENCE, vec![code("113076", "DCM", "Segmentation")]),
                    ])],
                ),
                sequence(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![item(vec![DataElement::new(
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        PrimitiveValue::U32([1u32, *k as u32 + 1][..].into()),
                    )])],
                ),
                sequence(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item(vec![texts(tags::IMAGE_POSITION_PATIENT, VR::DS, ds_all(&instance.position))])],
                ),
                sequence(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![item(vec![us(tags::REFERENCED_SEGMENT_NUMBER, 1)])],
                ),
            ])
        })
        .collect();
    elements.push(sequence(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    elements.push(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixel_data.into())));
    for e in elements {
        obj.put(e);
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(-123.456_789_012_345_68), "-123.45678901235");
        assert!(ds(1e300).len() <= 16);
        assert!((ds(-98.76543210987654).parse::<f64>().unwrap() + 98.76543210987654).abs() < 1e-12);
    }
}
