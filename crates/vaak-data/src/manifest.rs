//! Reading manifests: CSV with a header, or JSON Lines (one object per line).
//!
//! Columns are found by name (case-insensitive, trimmed), in any order; the English (People's
//! Speech) and Russian (Golos) CSV layouts differ only in order, and `vaak data synth` writes
//! the same rows as both CSV and JSONL. Required: `id`, `lang`, `audio_path`, `duration_s`
//! (plus `tier` when a tier filter is set); a column no row has fails the read at once, naming
//! the columns and the file. Every column, extra ones included, is kept in
//! [`ManifestRow::fields`] (so the cascade can copy it into `meta.json`). A malformed row
//! (wrong field count, bad duration, empty audio path, bytes that are not UTF-8, a JSONL line
//! that is not an object or lacks a required key) is counted, logged and skipped.
//!
//! The format is told from the content, not the name: a file whose first non-blank byte is `{`
//! is JSONL. JSONL values that are not strings are kept as their JSON text.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DataError, Result};

/// Columns every manifest must have.
pub const REQUIRED_COLUMNS: [&str; 4] = ["id", "lang", "audio_path", "duration_s"];

/// One usable manifest row.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestRow {
    /// 1-based line of the record in the file (header = line 1), for messages.
    pub line: u64,
    pub id: String,
    pub lang: String,
    /// As written in the manifest (`\` or `/` separators), relative to `data_root`.
    pub audio_path: String,
    pub duration_s: f64,
    pub tier: Option<String>,
    pub text: Option<String>,
    /// Every column of the row, in header order, with the header's spelling.
    pub fields: Vec<(String, String)>,
}

impl ManifestRow {
    /// The value of column `name` (case-insensitive), extra columns included.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A row that could not be used, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct MalformedRow {
    pub line: u64,
    pub reason: String,
}

/// A parsed manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub path: PathBuf,
    pub columns: Vec<String>,
    pub rows: Vec<ManifestRow>,
    pub malformed: Vec<MalformedRow>,
}

/// Reads the manifest (CSV or JSONL) at `path`. `require_tier` adds `tier` to the required
/// columns.
pub fn read_manifest(path: &Path, require_tier: bool) -> Result<Manifest> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    parse_manifest(std::io::BufReader::new(file), path, require_tier)
}

/// Parses a manifest (CSV or JSONL) from a reader; `path` names it in errors and messages.
pub fn parse_manifest<R: Read>(mut reader: R, path: &Path, require_tier: bool) -> Result<Manifest> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, e))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        parse_jsonl(&bytes, path, require_tier)
    } else {
        parse_csv(&bytes[..], path, require_tier)
    }
}

fn required_columns(require_tier: bool) -> Vec<&'static str> {
    let mut required: Vec<&str> = REQUIRED_COLUMNS.to_vec();
    if require_tier {
        required.push("tier");
    }
    required
}

fn parse_csv(reader: &[u8], path: &Path, require_tier: bool) -> Result<Manifest> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let manifest_err = |reason: String| DataError::Manifest {
        path: path.to_path_buf(),
        reason,
    };
    let header = rdr
        .byte_headers()
        .map_err(|e| manifest_err(format!("cannot read the header: {e}")))?
        .clone();
    let columns: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    if columns.iter().all(|c| c.is_empty()) {
        return Err(manifest_err("empty file or empty header".into()));
    }
    let find = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
    let missing: Vec<String> = required_columns(require_tier)
        .iter()
        .filter(|c| find(c).is_none())
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::MissingColumns {
            path: path.to_path_buf(),
            missing,
            found: columns,
        });
    }
    let col = |name: &str| find(name).expect("checked above");
    let (c_id, c_lang, c_path, c_dur) =
        (col("id"), col("lang"), col("audio_path"), col("duration_s"));
    let (c_tier, c_text) = (find("tier"), find("text"));

    let mut rows = Vec::new();
    let mut malformed = Vec::new();
    let mut record = csv::ByteRecord::new();
    let c_req = [c_id, c_lang, c_path, c_dur];
    loop {
        let line_guess = rdr.position().line() + 1;
        match rdr.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // Only I/O errors are fatal; anything else is this record's problem.
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(manifest_err(format!(
                        "read error near line {line_guess}: {e}"
                    )));
                }
                malformed.push(MalformedRow {
                    line: line_guess,
                    reason: e.to_string(),
                });
                continue;
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(line_guess);
        if record.len() == 1 && record.get(0).is_some_and(|f| f.is_empty()) {
            continue; // blank line
        }
        match csv_fields(&record, &columns)
            .and_then(|fields| make_row(fields, line, c_req, c_tier, c_text))
        {
            Ok(row) => rows.push(row),
            Err(reason) => {
                tracing::warn!(
                    "{}:{line}: skipping malformed row: {reason}",
                    path.display()
                );
                malformed.push(MalformedRow { line, reason });
            }
        }
    }
    Ok(Manifest {
        path: path.to_path_buf(),
        columns,
        rows,
        malformed,
    })
}

/// One JSON object with its keys in file order (serde_json's map would sort them).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = map.next_entry::<String, Value>()? {
                    v.push(kv);
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_jsonl(bytes: &[u8], path: &Path, require_tier: bool) -> Result<Manifest> {
    let mut columns: Vec<String> = Vec::new();
    let mut parsed: Vec<(u64, std::result::Result<Vec<(String, String)>, String>)> = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i as u64 + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let fields = std::str::from_utf8(raw)
            .map_err(|_| "the line is not valid UTF-8".to_string())
            .and_then(|t| serde_json::from_str::<OrderedObject>(t).map_err(|e| e.to_string()))
            .map(|o| {
                o.0.into_iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s,
                            Value::Null => String::new(),
                            other => other.to_string(),
                        };
                        (k.trim().to_string(), text)
                    })
                    .collect::<Vec<_>>()
            });
        if let Ok(f) = &fields {
            for (k, _) in f {
                if !columns.iter().any(|c| c.eq_ignore_ascii_case(k)) {
                    columns.push(k.clone());
                }
            }
        }
        parsed.push((line, fields));
    }
    if parsed.is_empty() {
        return Err(DataError::Manifest {
            path: path.to_path_buf(),
            reason: "empty file".into(),
        });
    }
    let missing: Vec<String> = required_columns(require_tier)
        .iter()
        .filter(|c| !columns.iter().any(|k| k.eq_ignore_ascii_case(c)))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::MissingColumns {
            path: path.to_path_buf(),
            missing,
            found: columns,
        });
    }
    let mut rows = Vec::new();
    let mut malformed = Vec::new();
    for (line, fields) in parsed {
        let row = fields.and_then(|fields| {
            let find = |name: &str| {
                fields
                    .iter()
                    .position(|(k, _)| k.eq_ignore_ascii_case(name))
            };
            let need = |name: &str| find(name).ok_or_else(|| format!("no '{name}' key"));
            let c_req = [
                need("id")?,
                need("lang")?,
                need("audio_path")?,
                need("duration_s")?,
            ];
            let c_tier = find("tier");
            if require_tier && c_tier.is_none() {
                return Err("no 'tier' key".into());
            }
            let c_text = find("text");
            make_row(fields, line, c_req, c_tier, c_text)
        });
        match row {
            Ok(r) => rows.push(r),
            Err(reason) => {
                tracing::warn!(
                    "{}:{line}: skipping malformed row: {reason}",
                    path.display()
                );
                malformed.push(MalformedRow { line, reason });
            }
        }
    }
    Ok(Manifest {
        path: path.to_path_buf(),
        columns,
        rows,
        malformed,
    })
}

fn csv_fields(
    record: &csv::ByteRecord,
    columns: &[String],
) -> std::result::Result<Vec<(String, String)>, String> {
    if record.len() != columns.len() {
        return Err(format!(
            "{} fields, the header has {}",
            record.len(),
            columns.len()
        ));
    }
    let mut fields = Vec::with_capacity(columns.len());
    for (i, raw) in record.iter().enumerate() {
        let v = std::str::from_utf8(raw)
            .map_err(|_| format!("column '{}' is not valid UTF-8", columns[i]))?;
        fields.push((columns[i].clone(), v.to_string()));
    }
    Ok(fields)
}

/// Checks and types one row's fields; `c_*` index into `fields`.
fn make_row(
    fields: Vec<(String, String)>,
    line: u64,
    [c_id, c_lang, c_path, c_dur]: [usize; 4],
    c_tier: Option<usize>,
    c_text: Option<usize>,
) -> std::result::Result<ManifestRow, String> {
    let get = |i: usize| fields[i].1.clone();
    let dur_text = get(c_dur);
    let duration_s: f64 = dur_text
        .trim()
        .parse()
        .map_err(|_| format!("duration_s '{dur_text}' is not a number"))?;
    if !duration_s.is_finite() || duration_s <= 0.0 {
        return Err(format!("duration_s '{dur_text}' is not a positive number"));
    }
    let audio_path = get(c_path).trim().to_string();
    if audio_path.is_empty() {
        return Err("audio_path is empty".into());
    }
    Ok(ManifestRow {
        line,
        id: get(c_id),
        lang: get(c_lang).trim().to_string(),
        audio_path,
        duration_s,
        tier: c_tier.map(|i| get(i).trim().to_string()),
        text: c_text.map(get),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, tier: bool) -> Result<Manifest> {
        parse_manifest(text.as_bytes(), Path::new("m.csv"), tier)
    }

    #[test]
    fn english_layout_with_backslash_paths_and_extra_columns() {
        let m = parse(
            "id,lang,dataset,split,tier,tier_rank,audio_path,duration_s,text,snr\n\
             a1,en,peoples_speech,train,Gold,1,keep\\en\\gold\\a1.wav,3.5,hello there,21.5\n",
            true,
        )
        .unwrap();
        assert_eq!(m.rows.len(), 1);
        let r = &m.rows[0];
        assert_eq!(r.id, "a1");
        assert_eq!(r.audio_path, "keep\\en\\gold\\a1.wav");
        assert_eq!(r.duration_s, 3.5);
        assert_eq!(r.tier.as_deref(), Some("Gold"));
        assert_eq!(r.text.as_deref(), Some("hello there"));
        assert_eq!(r.fields.len(), 10);
        assert_eq!(r.fields[9], ("snr".to_string(), "21.5".to_string()));
        assert_eq!(r.line, 2);
    }

    #[test]
    fn russian_layout_other_order_quoted_text() {
        let m = parse(
            "id,lang,dataset,split,audio_path,duration_s,text,source,tier,tier_rank,extra\n\
             r1,ru,golos,train,keep/ru/golos/r1.wav,4.25,\"привет, мир\",crowd,Gold,2,x\n",
            true,
        )
        .unwrap();
        let r = &m.rows[0];
        assert_eq!(r.text.as_deref(), Some("привет, мир"));
        assert_eq!(r.tier.as_deref(), Some("Gold"));
        assert!(r.fields.iter().any(|(k, v)| k == "extra" && v == "x"));
    }

    #[test]
    fn malformed_rows_are_counted_with_their_line_and_the_rest_kept() {
        let m = parse(
            "id,lang,audio_path,duration_s\n\
             ok1,ru,a.wav,2.0\n\
             short,ru,a.wav\n\
             nodur,ru,a.wav,abc\n\
             neg,ru,a.wav,-1\n\
             nopath,ru,,2\n\
             \n\
             ok2,ru,b.wav,3\n",
            false,
        )
        .unwrap();
        let ids: Vec<_> = m.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["ok1", "ok2"]);
        let lines: Vec<_> = m.malformed.iter().map(|b| b.line).collect();
        assert_eq!(lines, [3, 4, 5, 6]);
        assert!(m.malformed[1].reason.contains("abc"));
    }

    #[test]
    fn non_utf8_field_is_a_malformed_row() {
        let mut bytes = b"id,lang,audio_path,duration_s\nx,ru,".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b".wav,2\ny,ru,y.wav,2\n");
        let m = parse_manifest(&bytes[..], Path::new("m.csv"), false).unwrap();
        assert_eq!(m.rows.len(), 1);
        assert_eq!(m.malformed.len(), 1);
    }

    #[test]
    fn missing_required_columns_fail_naming_them_and_the_file() {
        let e = parse("id,language,path,duration_s\n", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.csv") && e.contains("lang") && e.contains("audio_path"),
            "{e}"
        );
        let e = parse("id,lang,audio_path,duration_s\n", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tier"), "{e}");
        assert!(parse("", false).is_err());
    }

    #[test]
    fn header_names_are_case_and_space_insensitive() {
        let m = parse(" ID , Lang,AUDIO_PATH, duration_s\nq,ru,q.wav,2\n", false).unwrap();
        assert_eq!(m.rows[0].id, "q");
    }

    #[test]
    fn jsonl_rows_keep_key_order_and_number_text() {
        let m = parse(
            "{\"id\":\"u1\",\"audio_path\":\"wav/u1.wav\",\"duration_s\":1.25,\"text\":\"hi\",\"lang\":\"en\",\"pitch\":40}\n\
             \n\
             {\"id\":\"u2\",\"lang\":\"en\",\"audio_path\":\"wav/u2.wav\",\"duration_s\":\"2\"}\n",
            false,
        )
        .unwrap();
        assert_eq!(m.rows.len(), 2);
        let r = &m.rows[0];
        assert_eq!((r.id.as_str(), r.duration_s, r.line), ("u1", 1.25, 1));
        assert_eq!(r.text.as_deref(), Some("hi"));
        assert_eq!(r.get("PITCH"), Some("40"));
        assert_eq!(r.fields[0].0, "id");
        assert_eq!(r.fields[1].0, "audio_path");
        assert_eq!(m.rows[1].line, 3);
        assert_eq!(
            m.columns,
            ["id", "audio_path", "duration_s", "text", "lang", "pitch"]
        );
    }

    #[test]
    fn jsonl_bad_lines_are_malformed_and_absent_columns_fail() {
        let m = parse(
            "{\"id\":\"a\",\"lang\":\"en\",\"audio_path\":\"a.wav\",\"duration_s\":1}\n\
             not json\n\
             {\"id\":\"b\",\"lang\":\"en\",\"duration_s\":1}\n\
             [1, 2]\n",
            false,
        )
        .unwrap();
        assert_eq!(m.rows.len(), 1);
        let lines: Vec<_> = m.malformed.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert!(m.malformed[1].reason.contains("audio_path"));
        let e = parse("{\"id\":\"a\",\"lang\":\"en\"}\n", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.csv") && e.contains("duration_s"), "{e}");
    }
}
