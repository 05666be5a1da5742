import os
import pickle

import pyarrow.fs as pafs

from study.common.tune_storage import atomic_local_filesystem


def test_a_write_cut_short_leaves_the_old_file_whole(tmp_path):
    files = atomic_local_filesystem()
    path = tmp_path / "experiment_state.json"
    path.write_text('{"old": true}')
    stream = files.open_output_stream(str(path))
    stream.write(b'{"new": tr')  # the process dies here: the stream is never closed
    assert path.read_text() == '{"old": true}'
    stream.close()
    assert path.read_text() == '{"new": tr'
    assert os.listdir(tmp_path) == ["experiment_state.json"]  # the temporary name is gone


def test_tune_style_folder_copies_arrive_byte_for_byte(tmp_path):
    """Tune uploads its staging folder with ``pyarrow.fs.copy_files``; it reads the files back the
    same way, and ships the file system to its workers pickled."""
    staging, storage, back = tmp_path / "staging", tmp_path / "storage", tmp_path / "back"
    (staging / "trial").mkdir(parents=True)
    payload = {"searcher": os.urandom(3_000_000)}  # larger than one copy chunk of 1 MiB
    (staging / "searcher-state.pkl").write_bytes(pickle.dumps(payload))
    (staging / "trial" / "result.json").write_text('{"epoch": 1}\n')
    files = pickle.loads(pickle.dumps(atomic_local_filesystem()))
    pafs.copy_files(str(staging), str(storage), destination_filesystem=files, chunk_size=1 << 20)
    assert pickle.loads((storage / "searcher-state.pkl").read_bytes()) == payload
    assert (storage / "trial" / "result.json").read_text() == '{"epoch": 1}\n'
    pafs.copy_files(str(storage), str(back), source_filesystem=files)
    assert (back / "searcher-state.pkl").read_bytes() == (staging / "searcher-state.pkl").read_bytes()
    listed = files.get_file_info(pafs.FileSelector(str(storage), recursive=True))
    assert sorted(os.path.relpath(info.path, storage) for info in listed) == [
        "searcher-state.pkl",
        "trial",
        "trial/result.json",
    ]
    files.copy_file(str(storage / "trial" / "result.json"), str(storage / "copy.json"))
    assert (storage / "copy.json").read_text() == '{"epoch": 1}\n'
