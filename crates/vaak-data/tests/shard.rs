//! `shard`: rows and audio bytes round-trip; rank/world partitioning covers every row once.

mod common;

use std::collections::HashMap;

use vaak_data::corpus::write_corpus;
use vaak_data::shard::{shard, unpack_rank, ShardReader};

#[test]
fn shards_round_trip_rows_and_bytes_and_partition_by_rank() {
    let d = tempfile::tempdir().unwrap();
    let (m, mut rows) = common::corpus(d.path(), 10, 16_000);
    // A FLAC-named file and every optional field set on one row.
    std::fs::write(d.path().join("wav/x.flac"), b"not really flac, bytes as-is").unwrap();
    let mut x = common::row("x/odd id", "wav/x.flac", 0.25, None);
    x.sample_rate = Some(48_000);
    x.channels = Some(2);
    x.source_id = Some("u000".into());
    x.augment = Some("speed=1.1".into());
    rows.push(x);
    write_corpus(&m, &rows).unwrap();
    let out = d.path().join("shards");
    let index = shard(&m, &out, None, 3).unwrap();
    assert_eq!(index.shards.len(), 4);
    assert_eq!(index.rows, 11);
    assert!(out.join("cuts.000003.jsonl").is_file() && out.join("audio.000003.tar").is_file());
    let reader = ShardReader::open(&out).unwrap();
    let all: Vec<_> = reader.iter(0, 1).unwrap().map(Result::unwrap).collect();
    assert_eq!(all.len(), rows.len());
    for (item, row) in all.iter().zip(&rows) {
        assert_eq!(&item.row, row);
        let bytes = std::fs::read(d.path().join(&row.audio_path)).unwrap();
        assert_eq!(item.audio, bytes, "{}", row.id);
    }
    assert!(all[10].member.ends_with(".flac") && all[0].member.ends_with(".wav"));
    for world in [1, 2, 3, 5] {
        let mut count: HashMap<String, usize> = HashMap::new();
        for rank in 0..world {
            for item in reader.iter(rank, world).unwrap() {
                let item = item.unwrap();
                assert_eq!(item.shard % world, rank);
                *count.entry(item.row.id).or_default() += 1;
            }
        }
        assert_eq!(count.len(), rows.len(), "world {world}");
        assert!(count.values().all(|&c| c == 1), "world {world}");
    }
    assert!(reader.iter(2, 2).is_err());
    let files = unpack_rank(&out, 1, 2, &d.path().join("unpacked")).unwrap();
    assert_eq!(files.len(), 3 + 2, "shards 1 and 3");
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(d.path().join(&rows[3].audio_path)).unwrap()
    );
}

#[test]
fn a_corrupt_shard_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let (m, _) = common::corpus(d.path(), 4, 16_000);
    let out = d.path().join("shards");
    shard(&m, &out, None, 2).unwrap();
    std::fs::write(out.join("cuts.000001.jsonl"), "{\"id\":\"u002\"}\n").unwrap();
    let reader = ShardReader::open(&out).unwrap();
    let e = reader
        .iter(0, 1)
        .unwrap()
        .find_map(Result::err)
        .expect("shard 1 is corrupt");
    assert!(e.to_string().contains("cuts.000001.jsonl"), "{e}");
    assert!(ShardReader::open(d.path()).is_err());
}

/// Rows whose audio is a parquet cell (`vaak data manifest` on a Hugging Face download) are
/// sharded with the cell's bytes and prepared to FLAC like files.
#[test]
fn parquet_cells_are_sharded_and_prepared() {
    let d = tempfile::tempdir().unwrap();
    let wav = common::wav_bytes(8_000, 16_000, 1);
    common::write_parquet(
        &d.path().join("data/train-0.parquet"),
        &common::Shard {
            audio_col: "audio",
            hf_struct: true,
            str_cols: &["text"],
            rows: vec![
                (Some(wav.clone()), "a.wav".into(), vec![Some("one".into())]),
                (Some(wav.clone()), "b.wav".into(), vec![Some("two".into())]),
            ],
            groups: &[2],
        },
    );
    let rows = vec![
        common::row("p0", "data/train-0.parquet#row=0", 0.5, None),
        common::row("p1", "data/train-0.parquet#row=1", 0.5, None),
    ];
    let m = d.path().join("m.jsonl");
    write_corpus(&m, &rows).unwrap();

    let out = d.path().join("shards");
    shard(&m, &out, None, 10).unwrap();
    let items: Vec<_> = ShardReader::open(&out)
        .unwrap()
        .iter(0, 1)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].member, "p0.wav");
    assert_eq!(items[1].audio, wav);

    let cfg = vaak_data::prepare::PrepareConfig::new(d.path().join("prepared"));
    let s = vaak_data::prepare::prepare(&m, &cfg, &|_| {}).unwrap();
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    let back = vaak_data::corpus::read_corpus(&s.manifest).unwrap().rows;
    assert_eq!(back.len(), 2);
    assert!(
        (back[0].duration_s - 0.5).abs() < 1e-3,
        "{}",
        back[0].duration_s
    );
}
