"""Tests for data_pipeline.manifest: directory scans, list caches, trial lists."""

import os
import pathlib

import numpy as np
import pytest

from data_pipeline import manifest as mf


def _touch(root: pathlib.Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


@pytest.fixture
def vox_tree(tmp_path):
    root = tmp_path / "wav"
    _touch(root,
           "id10002/vidB/00002.wav", "id10002/vidB/00001.flac", "id10002/vidA/00003.WAV",
           "id10001/xyz/00001.wav",
           "id10003/aaa/00001.wav",
           # not audio / hidden / no speaker directory: ignored
           "id10001/xyz/notes.txt", "id10001/xyz/00002.wav.lock", "id10001/xyz/._00003.wav",
           "id10003/.hidden/00001.wav", "top_level.wav")
    return root


def test_scan_three_levels(vox_tree):
    m = mf.scan_dir(vox_tree)
    rels = [os.path.relpath(p, vox_tree) for p in m.paths]
    assert rels == ["id10001/xyz/00001.wav", "id10002/vidA/00003.WAV", "id10002/vidB/00001.flac",
                    "id10002/vidB/00002.wav", "id10003/aaa/00001.wav"]
    assert all(os.path.isabs(p) for p in m.paths)
    assert list(m.paths) == sorted(m.paths)
    assert m.root == vox_tree
    assert m.speakers == ("id10001", "id10002", "id10002", "id10002", "id10003")
    assert m.speaker_ids == ("id10001", "id10002", "id10003")
    assert m.labels.dtype == np.int32
    np.testing.assert_array_equal(m.labels, [0, 1, 1, 1, 2])
    assert m.num_speakers == 3 and len(m) == 5
    assert [m.speaker_ids[i] for i in m.labels] == list(m.speakers)


def test_scan_two_levels_and_extensions(tmp_path):
    root = tmp_path / "flat"
    _touch(root, "spkB/u2.flac", "spkB/u1.wav", "spkA/u9.wav", "spkA/readme.md", "spkC/u1.ogg")
    m = mf.scan_dir(root)
    assert [os.path.relpath(p, root) for p in m.paths] == ["spkA/u9.wav", "spkB/u1.wav", "spkB/u2.flac"]
    assert m.speaker_ids == ("spkA", "spkB")  # spkC has no .wav/.flac
    np.testing.assert_array_equal(m.labels, [0, 1, 1])
    only_flac = mf.scan_dir(str(root), extensions=(".flac",))
    assert [os.path.basename(p) for p in only_flac.paths] == ["u2.flac"]
    assert mf.scan_dir(root, extensions="ogg").speakers == ("spkC",)


def test_scan_is_deterministic(vox_tree):
    assert mf.scan_dir(vox_tree) == mf.scan_dir(vox_tree)


def test_scan_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        mf.scan_dir(missing)


def test_scan_empty_root(tmp_path):
    root = tmp_path / "empty"
    _touch(root, "spk1/vid/readme.txt")
    with pytest.raises(ValueError) as err:
        mf.scan_dir(root)
    assert str(root) in str(err.value)
    assert ".wav" in str(err.value) and ".flac" in str(err.value)


def test_manifest_labels_read_only(vox_tree):
    m = mf.scan_dir(vox_tree)
    with pytest.raises(ValueError):
        m.labels[0] = 5


def test_list_round_trip(vox_tree, tmp_path):
    m = mf.scan_dir(vox_tree)
    lst = tmp_path / "train.list"
    mf.write_list(m, lst)
    lines = lst.read_text().splitlines()
    assert lines[0] == f"# root: {vox_tree}"
    assert lines[1] == "id10001/xyz/00001.wav id10001"
    assert len(lines) == 1 + len(m)
    assert mf.read_list(lst) == m
    # An explicit root overrides the header (the tree moved).
    moved = mf.read_list(lst, root=tmp_path / "elsewhere")
    assert moved.root == tmp_path / "elsewhere"
    assert moved.paths[0] == str(tmp_path / "elsewhere" / "id10001/xyz/00001.wav")
    np.testing.assert_array_equal(moved.labels, m.labels)


def test_read_list_unsorted_and_errors(tmp_path):
    lst = tmp_path / "x.list"
    lst.write_text("\nb/1.wav spkB\n  a/2.wav spkA  \n\n")
    with pytest.raises(ValueError, match="root"):
        mf.read_list(lst)
    m = mf.read_list(lst, root=tmp_path)
    assert m.paths == (str(tmp_path / "a/2.wav"), str(tmp_path / "b/1.wav"))
    assert m.speakers == ("spkA", "spkB")
    lst.write_text("a/1.wav spkA\na/2.wav\n")
    with pytest.raises(ValueError, match=r"x\.list:2"):
        mf.read_list(lst, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.list"):
        mf.read_list(tmp_path / "nope.list")


# ------------------------------------------------------------------------------------------------------------
# Trials
# ------------------------------------------------------------------------------------------------------------

VOX_TRIALS = """1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav
0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav

   1 id10273/0OCW1HUxZyg/00001.wav   id10273/AABBCCDDEEF/00002.wav  
0 id10273/0OCW1HUxZyg/00001.wav id10270/8jEAjG6SegY/00008.wav
"""

KALDI_TRIALS = """id10270-x6uYqmx31kE-00001 id10270-8jEAjG6SegY-00008 target

id10270-x6uYqmx31kE-00001 id10300-ize_eiCFEg0-00003 nontarget
id10300-ize_eiCFEg0-00003 id10300-aaaa-00001 target
"""


def test_read_voxceleb_trials(tmp_path):
    path = tmp_path / "vox1_O_cleaned.txt"
    path.write_text(VOX_TRIALS)
    t = mf.read_trials(path)
    assert t.name == "vox1_O_cleaned" and t.path == path
    assert len(t) == 4
    assert t.labels.dtype == np.int8
    np.testing.assert_array_equal(t.labels, [1, 0, 1, 0])
    assert t.enroll[2] == "id10273/0OCW1HUxZyg/00001.wav"
    assert t.test[2] == "id10273/AABBCCDDEEF/00002.wav"
    assert t.utterances == tuple(sorted(set(t.enroll) | set(t.test)))
    assert len(t.utterances) == 5


@pytest.mark.parametrize("file_name, name", [
    ("veri_test2.txt", "vox1_O_cleaned"), ("list_test_all2.txt", "vox1_E_cleaned"),
    ("list_test_hard2.txt", "vox1_H_cleaned"), ("veri_test.txt", "vox1_O"), ("list_test_hard.txt", "vox1_H"),
    ("vox1_E_cleaned.kaldi", "vox1_E_cleaned"), ("my_trials.txt", "my_trials")])
def test_official_vox1_list_files_get_wespeaker_names(tmp_path, file_name, name):
    path = tmp_path / file_name
    path.write_text(VOX_TRIALS)
    assert mf.read_trials(path).name == name


def test_read_kaldi_trials(tmp_path):
    path = tmp_path / "trials"
    path.write_text(KALDI_TRIALS)
    t = mf.read_trials(str(path))
    assert t.name == "trials"
    np.testing.assert_array_equal(t.labels, [1, 0, 1])
    assert t.labels.dtype == np.int8
    assert t.enroll == ("id10270-x6uYqmx31kE-00001", "id10270-x6uYqmx31kE-00001", "id10300-ize_eiCFEg0-00003")
    assert t.test[1] == "id10300-ize_eiCFEg0-00003"
    assert len(t.utterances) == 4


@pytest.mark.parametrize("text, bad_lineno, bad", [
    ("1 a.wav b.wav\n\n2 a.wav c.wav\n", 3, "2 a.wav c.wav"),           # bad label
    ("1 a.wav b.wav\n0 a.wav\n", 2, "0 a.wav"),                         # too few fields
    ("a b target\nb c nontarget\nc d maybe\n", 3, "c d maybe"),          # bad Kaldi label
    ("a b target\n1 a.wav b.wav\n", 2, "1 a.wav b.wav"),                 # format switch mid-file
    ("hello world\n", 1, "hello world"),                                 # neither format
])
def test_malformed_trials(tmp_path, text, bad_lineno, bad):
    path = tmp_path / "broken_list.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        mf.read_trials(path)
    msg = str(err.value)
    assert "broken_list.txt" in msg and f":{bad_lineno}:" in msg and bad in msg


def test_empty_and_missing_trials(tmp_path):
    path = tmp_path / "empty_trials.txt"
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty_trials.txt"):
        mf.read_trials(path)
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        mf.read_trials(tmp_path / "absent.txt")


def test_check_trial_files(tmp_path):
    path = tmp_path / "vox1_O.txt"
    path.write_text(VOX_TRIALS)
    trials = mf.read_trials(path)
    root = tmp_path / "wav"
    present = ["id10270/x6uYqmx31kE/00001.wav", "id10273/0OCW1HUxZyg/00001.wav"]
    _touch(root, *present)
    (root / "id10270/8jEAjG6SegY/00008.wav").mkdir(parents=True)  # a directory is not an audio file
    with pytest.raises(FileNotFoundError) as err:
        mf.check_trial_files(trials, root)
    msg = str(err.value)
    missing = sorted(set(trials.utterances) - set(present))
    assert len(missing) == 3
    assert all(m in msg for m in missing)
    assert not any(p in msg for p in present)
    assert "3 of 5" in msg and str(path) in msg and str(root) in msg
    (root / "id10270/8jEAjG6SegY/00008.wav").rmdir()
    _touch(root, *missing)
    mf.check_trial_files(trials, root)  # all present: no error
    with pytest.raises(FileNotFoundError, match="no_root"):
        mf.check_trial_files(trials, tmp_path / "no_root")


def test_check_trial_files_lists_at_most_ten(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"0 s/v/{i:03d}.wav s/w/{i:03d}.wav\n" for i in range(20)))
    (tmp_path / "wav").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        mf.check_trial_files(mf.read_trials(path), tmp_path / "wav")
    msg = str(err.value)
    assert "40 of 40" in msg and "30 more" in msg
    assert sum(line.strip().startswith("s/") for line in msg.splitlines()) == 10


def test_parse_trial_paths():
    assert mf.parse_trial_paths("a/vox1_O.txt") == [pathlib.Path("a/vox1_O.txt")]
    assert mf.parse_trial_paths(" a/vox1_O.txt , ,b/vox1_E.txt,\n c/vox1_H.txt ,") == [
        pathlib.Path("a/vox1_O.txt"), pathlib.Path("b/vox1_E.txt"), pathlib.Path("c/vox1_H.txt")]
    assert mf.parse_trial_paths("") == []
    assert mf.parse_trial_paths(" , ") == []
