//! SentencePiece models read straight from the published `.model` / `.spm` files.
//!
//! M2M-100 ships `sentencepiece.bpe.model` and Marian ships `source.spm`/`target.spm`; both are
//! serialized `ModelProto` messages. We parse them with a minimal protobuf reader (the handful of
//! fields encoding needs; no protobuf crate) and reimplement the C++ library's encoder so the
//! pieces equal `SentencePieceProcessor.encode(text, out_type=str)`:
//!
//! - normalisation: longest-match rewriting through the model's precompiled charsmap (a
//!   darts-clone double-array trie plus a blob of replacement strings), user-defined symbols kept
//!   verbatim, leading/trailing/repeated spaces dropped, the dummy `▁` prefix, spaces escaped
//!   to `▁`;
//! - BPE (`model_type: BPE`): repeatedly merge the adjacent pair whose merged piece scores
//!   highest (leftmost on ties), then split `UNUSED` pieces back;
//! - Unigram: the best-scoring segmentation (Viterbi, unknown characters at `min score - 10`);
//! - runs of unknown pieces fused into one, as the library does.
//!
//! Decoding follows `DecodePieces`: control pieces vanish, `<unk>` becomes the model's unknown
//! surface, the first `▁` of the text is dropped and the others become spaces.
//! Byte-fallback, whitespace-as-suffix and WORD/CHAR models are refused at load (no MT model we
//! load uses them). The `tokenizers` crate was not used for these: its `Precompiled` normaliser
//! works grapheme by grapheme rather than by longest byte match, and its models do not reproduce
//! SentencePiece's unknown fusion for BPE; writing the algorithms keeps parity exact.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{Result, TeacherError};

/// SentencePiece's whitespace marker, U+2581.
pub const SPACE_SYMBOL: char = '\u{2581}';
const SPACE_STR: &str = "\u{2581}";
/// Viterbi penalty of an unknown character below the lowest piece score (`kUnkPenalty`).
const UNK_PENALTY: f32 = 10.0;
/// The normaliser considers at most this many trie matches per position (`kMaxTrieResultsSize`).
const MAX_TRIE_RESULTS: usize = 32;

/// Segmentation algorithm of a SentencePiece model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpmModelType {
    Unigram,
    Bpe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Clone, Debug)]
struct Piece {
    text: String,
    score: f32,
    kind: PieceType,
}

/// The precompiled-charsmap normaliser plus the whitespace rules of `NormalizerSpec`.
#[derive(Clone, Debug)]
struct Normalizer {
    /// darts-clone units; empty for the identity rule.
    trie: Vec<u32>,
    /// NUL-separated replacement strings the trie values point into.
    replacements: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Normalizer {
    fn from_charsmap(blob: &[u8]) -> std::result::Result<(Vec<u32>, Vec<u8>), String> {
        if blob.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if blob.len() <= 4 {
            return Err("precompiled_charsmap is truncated".into());
        }
        let trie_len = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        if trie_len > blob.len() - 4 || !trie_len.is_multiple_of(4) {
            return Err(format!(
                "precompiled_charsmap: trie size {trie_len} does not fit the {}-byte blob",
                blob.len()
            ));
        }
        let trie = blob[4..4 + trie_len]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((trie, blob[4 + trie_len..].to_vec()))
    }

    /// darts-clone `commonPrefixSearch`: `(value, length)` of every key that prefixes `key`.
    fn common_prefix_search(&self, key: &[u8]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        let units = &self.trie;
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let Some(&root) = units.first() else {
            return out;
        };
        let mut pos = offset(root);
        for (i, &b) in key.iter().enumerate() {
            pos ^= b as usize;
            let Some(&unit) = units.get(pos) else {
                return out;
            };
            // A leaf unit's label has its MSB set, so it never equals a byte.
            if unit & ((1 << 31) | 0xFF) != b as u32 {
                return out;
            }
            pos ^= offset(unit);
            if (unit >> 8) & 1 == 1 {
                let Some(&leaf) = units.get(pos) else {
                    return out;
                };
                if out.len() < MAX_TRIE_RESULTS {
                    out.push((leaf & ((1 << 31) - 1), i + 1));
                }
            }
        }
        out
    }

    /// The replacement string at `offset` in the blob (up to its NUL).
    fn replacement(&self, offset: usize) -> &[u8] {
        let tail = self.replacements.get(offset..).unwrap_or(&[]);
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        &tail[..end]
    }
}

/// A parsed SentencePiece model.
#[derive(Clone, Debug)]
pub struct SentencePiece {
    path: PathBuf,
    model_type: SpmModelType,
    pieces: Vec<Piece>,
    /// NORMAL, USER_DEFINED and UNUSED pieces: the ones segmentation may produce.
    normal: HashMap<String, u32>,
    /// Control, unknown and byte pieces.
    reserved: HashMap<String, u32>,
    /// USER_DEFINED pieces, longest first (they are never split nor normalised).
    user_defined: Vec<String>,
    unk_id: u32,
    min_score: f32,
    max_score: f32,
    max_piece_len: usize,
    unk_surface: String,
    norm: Normalizer,
}

/// One protobuf field value.
enum Field<'a> {
    Varint(u64),
    Fixed64,
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// Just enough of the protobuf wire format to walk `ModelProto`.
struct ProtoReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ProtoReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            v |= ((b & 0x7F) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("field of {n} bytes at byte {} runs past the end", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `(field number, value)`, or None at the end.
    fn next_field(&mut self) -> std::result::Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(format!("unsupported wire type {w} at byte {}", self.pos)),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn utf8(b: &[u8], what: &str) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

#[derive(Default)]
struct TrainerFields {
    model_type: Option<u64>,
    byte_fallback: bool,
    ws_suffix: bool,
    unk_surface: Option<String>,
}

struct NormFields {
    charsmap: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

fn parse_piece(b: &[u8]) -> std::result::Result<Piece, String> {
    let mut r = ProtoReader::new(b);
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while let Some((f, v)) = r.next_field()? {
        match (f, v) {
            (1, Field::Bytes(s)) => piece.text = utf8(s, "piece")?,
            (2, Field::Fixed32(x)) => piece.score = f32::from_bits(x),
            (3, Field::Varint(t)) => {
                piece.kind = match t {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    t => return Err(format!("piece {:?} has unknown type {t}", piece.text)),
                }
            }
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer(b: &[u8]) -> std::result::Result<TrainerFields, String> {
    let mut r = ProtoReader::new(b);
    let mut t = TrainerFields::default();
    while let Some((f, v)) = r.next_field()? {
        match (f, v) {
            (3, Field::Varint(x)) => t.model_type = Some(x),
            (24, Field::Varint(x)) => t.ws_suffix = x != 0,
            (35, Field::Varint(x)) => t.byte_fallback = x != 0,
            (44, Field::Bytes(s)) => t.unk_surface = Some(utf8(s, "unk_surface")?),
            _ => {}
        }
    }
    Ok(t)
}

fn parse_normalizer(b: &[u8]) -> std::result::Result<NormFields, String> {
    let mut r = ProtoReader::new(b);
    let mut n = NormFields {
        charsmap: Vec::new(),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        escape_whitespaces: true,
    };
    while let Some((f, v)) = r.next_field()? {
        match (f, v) {
            (2, Field::Bytes(s)) => n.charsmap = s.to_vec(),
            (3, Field::Varint(x)) => n.add_dummy_prefix = x != 0,
            (4, Field::Varint(x)) => n.remove_extra_whitespaces = x != 0,
            (5, Field::Varint(x)) => n.escape_whitespaces = x != 0,
            _ => {}
        }
    }
    Ok(n)
}

/// A merge candidate of the BPE agenda: highest score first, then leftmost.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl SentencePiece {
    /// Reads a `.model` / `.spm` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            reason: format!("cannot read SentencePiece model: {e}"),
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a serialized `ModelProto`; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        Self::parse(bytes, path).map_err(|reason| TeacherError::Config {
            path: path.to_path_buf(),
            reason: format!("bad SentencePiece model: {reason}"),
        })
    }

    fn parse(bytes: &[u8], path: &Path) -> std::result::Result<Self, String> {
        let mut r = ProtoReader::new(bytes);
        let mut pieces = Vec::new();
        let mut trainer = TrainerFields::default();
        let mut norm = None;
        while let Some((f, v)) = r.next_field()? {
            match (f, v) {
                (1, Field::Bytes(b)) => pieces.push(parse_piece(b)?),
                (2, Field::Bytes(b)) => trainer = parse_trainer(b)?,
                (3, Field::Bytes(b)) => norm = Some(parse_normalizer(b)?),
                _ => {}
            }
        }
        if pieces.is_empty() {
            return Err("no pieces (is this a SentencePiece model?)".into());
        }
        let model_type = match trainer.model_type.unwrap_or(1) {
            1 => SpmModelType::Unigram,
            2 => SpmModelType::Bpe,
            3 => return Err("model_type WORD is not supported".into()),
            4 => return Err("model_type CHAR is not supported".into()),
            t => return Err(format!("unknown model_type {t}")),
        };
        if trainer.byte_fallback {
            return Err("byte_fallback models are not supported".into());
        }
        if trainer.ws_suffix {
            return Err("treat_whitespace_as_suffix models are not supported".into());
        }
        let norm = norm.unwrap_or(NormFields {
            charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        });
        let (trie, replacements) = Normalizer::from_charsmap(&norm.charsmap)?;
        let mut normal = HashMap::new();
        let mut reserved = HashMap::new();
        let mut user_defined = Vec::new();
        let mut unk_id = None;
        let (mut min_score, mut max_score) = (f32::MAX, f32::MIN_POSITIVE);
        let mut max_piece_len = 1;
        for (i, p) in pieces.iter().enumerate() {
            if p.text.is_empty() {
                return Err(format!("piece {i} is empty"));
            }
            let id = i as u32;
            let map = match p.kind {
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused => &mut normal,
                _ => &mut reserved,
            };
            if map.insert(p.text.clone(), id).is_some() {
                return Err(format!("piece {:?} is defined twice", p.text));
            }
            match p.kind {
                PieceType::Normal => {
                    min_score = min_score.min(p.score);
                    max_score = max_score.max(p.score);
                }
                PieceType::UserDefined => user_defined.push(p.text.clone()),
                PieceType::Unknown if unk_id.is_some() => {
                    return Err("more than one unknown piece".into());
                }
                PieceType::Unknown => unk_id = Some(id),
                _ => {}
            }
            max_piece_len = max_piece_len.max(p.text.len());
        }
        let unk_id = unk_id.ok_or("no unknown piece")?;
        user_defined.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(Self {
            path: path.to_path_buf(),
            model_type,
            pieces,
            normal,
            reserved,
            user_defined,
            unk_id,
            min_score,
            max_score,
            max_piece_len,
            unk_surface: trainer.unk_surface.unwrap_or_else(|| " \u{2047} ".into()),
            norm: Normalizer {
                trie,
                replacements,
                add_dummy_prefix: norm.add_dummy_prefix,
                remove_extra_whitespaces: norm.remove_extra_whitespaces,
                escape_whitespaces: norm.escape_whitespaces,
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn model_type(&self) -> SpmModelType {
        self.model_type
    }

    /// Number of pieces (the spm's own id space).
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// The spm id of a piece (`<unk>`'s id when unknown), as `PieceToId`.
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.normal.get(piece))
            .copied()
            .unwrap_or(self.unk_id)
    }

    /// The piece of an spm id.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.text.as_str())
    }

    /// Length of the user-defined symbol `s` starts with (longest), if any.
    fn user_defined_prefix(&self, s: &str) -> Option<usize> {
        self.user_defined
            .iter()
            .find(|u| s.starts_with(u.as_str()))
            .map(|u| u.len())
    }

    /// `NormalizePrefix`: the normalised form of the start of `s` and the bytes it consumed.
    fn normalize_prefix<'s>(&'s self, s: &'s str) -> (&'s [u8], usize) {
        if let Some(n) = self.user_defined_prefix(s) {
            return (&s.as_bytes()[..n], n);
        }
        let mut best: Option<(u32, usize)> = None;
        for (value, len) in self.norm.common_prefix_search(s.as_bytes()) {
            if best.is_none_or(|(_, l)| len > l) {
                best = Some((value, len));
            }
        }
        match best {
            Some((value, len)) => (self.norm.replacement(value as usize), len),
            None => {
                let n = s.chars().next().map_or(0, char::len_utf8);
                (&s.as_bytes()[..n], n)
            }
        }
    }

    /// The normalised text segmentation runs on (with `▁` for spaces and the dummy prefix).
    pub fn normalize(&self, input: &str) -> String {
        let norm = &self.norm;
        let mut input = input;
        if norm.remove_extra_whitespaces {
            while !input.is_empty() {
                let (sp, n) = self.normalize_prefix(input);
                if sp != b" " {
                    break;
                }
                input = &input[n..];
            }
        }
        if input.is_empty() {
            return String::new();
        }
        let space: &[u8] = if norm.escape_whitespaces {
            SPACE_STR.as_bytes()
        } else {
            b" "
        };
        let mut out: Vec<u8> = Vec::with_capacity(input.len() * 3);
        if norm.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = norm.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut sp, n) = self.normalize_prefix(input);
            while is_prev_space && sp.first() == Some(&b' ') {
                sp = &sp[1..];
            }
            if !sp.is_empty() {
                for &b in sp {
                    if norm.escape_whitespaces && b == b' ' {
                        out.extend_from_slice(space);
                    } else {
                        out.push(b);
                    }
                }
                is_prev_space = sp.last() == Some(&b' ');
            }
            input = &input[n..];
            if !norm.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if norm.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        // Replacement strings come from the model file; a broken one must not panic.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// The pieces of `text`, as `SentencePieceProcessor.encode(text, out_type=str)`: unknown
    /// runs are fused into one piece holding their text.
    pub fn encode(&self, text: &str) -> Vec<String> {
        let normalized = self.normalize(text);
        let raw = match self.model_type {
            SpmModelType::Bpe => self.encode_bpe(&normalized),
            SpmModelType::Unigram => self.encode_unigram(&normalized),
        };
        let mut out: Vec<String> = Vec::with_capacity(raw.len());
        let mut prev_unk = false;
        for (piece, id) in raw {
            let is_unk = id == self.unk_id;
            match out.last_mut() {
                Some(last) if prev_unk && is_unk => last.push_str(&piece),
                _ => out.push(piece),
            }
            prev_unk = is_unk;
        }
        out
    }

    fn encode_bpe(&self, s: &str) -> Vec<(String, u32)> {
        struct Sym {
            start: usize,
            end: usize,
            prev: Option<usize>,
            next: Option<usize>,
            freeze: bool,
        }
        let mut syms: Vec<Sym> = Vec::new();
        let mut pos = 0;
        while pos < s.len() {
            let (len, freeze) = match self.user_defined_prefix(&s[pos..]) {
                Some(n) => (n, true),
                None => (s[pos..].chars().next().map_or(1, char::len_utf8), false),
            };
            let i = syms.len();
            syms.push(Sym {
                start: pos,
                end: pos + len,
                prev: i.checked_sub(1),
                next: (pos + len < s.len()).then_some(i + 1),
                freeze,
            });
            pos += len;
        }
        let mut agenda = BinaryHeap::new();
        let mut rev_merge: HashMap<String, (String, String)> = HashMap::new();
        let try_pair = |syms: &Vec<Sym>,
                        agenda: &mut BinaryHeap<Pair>,
                        rev: &mut HashMap<String, (String, String)>,
                        left: Option<usize>,
                        right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else {
                return;
            };
            if syms[l].freeze || syms[r].freeze {
                return;
            }
            let merged = &s[syms[l].start..syms[r].end];
            let Some(&id) = self.normal.get(merged) else {
                return;
            };
            let p = &self.pieces[id as usize];
            agenda.push(Pair {
                score: p.score,
                left: l,
                right: r,
                size: merged.len(),
            });
            if p.kind == PieceType::Unused {
                rev.insert(
                    merged.to_string(),
                    (
                        s[syms[l].start..syms[l].end].to_string(),
                        s[syms[r].start..syms[r].end].to_string(),
                    ),
                );
            }
        };
        for i in 1..syms.len() {
            try_pair(&syms, &mut agenda, &mut rev_merge, Some(i - 1), Some(i));
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (top.left, top.right);
            let (ll, rl) = (syms[l].end - syms[l].start, syms[r].end - syms[r].start);
            if ll == 0 || rl == 0 || ll + rl != top.size {
                continue; // stale: one side was merged away since
            }
            syms[l].end = syms[r].end;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            syms[r].start = syms[r].end;
            let prev = syms[l].prev;
            let next = syms[l].next;
            try_pair(&syms, &mut agenda, &mut rev_merge, prev, Some(l));
            try_pair(&syms, &mut agenda, &mut rev_merge, Some(l), next);
        }
        let mut out = Vec::new();
        let mut idx = if syms.is_empty() { None } else { Some(0) };
        while let Some(i) = idx {
            self.resegment(&s[syms[i].start..syms[i].end], &rev_merge, &mut out);
            idx = syms[i].next;
        }
        out
    }

    /// Splits merged UNUSED pieces back into the pieces they were made of.
    fn resegment(
        &self,
        w: &str,
        rev: &HashMap<String, (String, String)>,
        out: &mut Vec<(String, u32)>,
    ) {
        let id = self.piece_to_id(w);
        let unused = self.pieces[id as usize].kind == PieceType::Unused;
        match rev.get(w) {
            Some((a, b)) if unused => {
                self.resegment(a, rev, out);
                self.resegment(b, rev, out);
            }
            _ => out.push((w.to_string(), id)),
        }
    }

    fn encode_unigram(&self, s: &str) -> Vec<(String, u32)> {
        #[derive(Clone, Copy)]
        struct Best {
            id: u32,
            score: f32,
            start: Option<usize>,
        }
        let size = s.len();
        if size == 0 {
            return Vec::new();
        }
        let unk_score = self.min_score - UNK_PENALTY;
        let mut best = vec![
            Best {
                id: self.unk_id,
                score: 0.0,
                start: None,
            };
            size + 1
        ];
        let mut start = 0;
        while start < size {
            let here = best[start].score;
            let mblen = s[start..].chars().next().map_or(1, char::len_utf8);
            let mut has_single = false;
            for (off, c) in s[start..].char_indices() {
                let end = start + off + c.len_utf8();
                if end - start > self.max_piece_len {
                    break;
                }
                let Some(&id) = self.normal.get(&s[start..end]) else {
                    continue;
                };
                let piece = &self.pieces[id as usize];
                if piece.kind == PieceType::Unused {
                    continue;
                }
                let len = end - start;
                // The library scores user-defined symbols in double precision.
                let cand = if piece.kind == PieceType::UserDefined {
                    (len as f32 * self.max_score) as f64 - 0.1 + here as f64
                } else {
                    (piece.score + here) as f64
                };
                let target = &mut best[end];
                if target.start.is_none() || cand > target.score as f64 {
                    *target = Best {
                        id,
                        score: cand as f32,
                        start: Some(start),
                    };
                }
                if len == mblen {
                    has_single = true;
                }
            }
            if !has_single {
                let cand = unk_score + here;
                let target = &mut best[start + mblen];
                if target.start.is_none() || cand > target.score {
                    *target = Best {
                        id: self.unk_id,
                        score: cand,
                        start: Some(start),
                    };
                }
            }
            start += mblen;
        }
        let mut out = Vec::new();
        let mut end = size;
        while end > 0 {
            let node = best[end];
            let st = node.start.unwrap_or(0);
            out.push((s[st..end].to_string(), node.id));
            end = st;
        }
        out.reverse();
        out
    }

    /// `DecodePieces`: the text of a piece sequence.
    pub fn decode_pieces<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        let mut text = String::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for piece in pieces {
            let piece = piece.as_ref();
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            let id = self.piece_to_id(piece);
            let p = &self.pieces[id as usize];
            bos_ws_seen = false;
            match p.kind {
                PieceType::Control => {}
                PieceType::Unknown => {
                    if p.text == piece {
                        text.push_str(&self.unk_surface);
                    } else {
                        text.push_str(piece);
                    }
                }
                _ => {
                    let mut rest = piece;
                    if is_bos_ws
                        && (self.norm.add_dummy_prefix || self.norm.remove_extra_whitespaces)
                    {
                        if let Some(r) = rest.strip_prefix(SPACE_SYMBOL) {
                            rest = r;
                            bos_ws_seen = !self.norm.remove_extra_whitespaces;
                        }
                    }
                    text.push_str(&rest.replace(SPACE_SYMBOL, " "));
                }
            }
        }
        text
    }
}
