"""Programs from unpacked Debian packages: a tools folder reused as recorded, and one unpacked on a
machine that had a library installed topped up with what this machine lacks (real apt-get download)."""

import json
import shutil

import pytest

from genomamba.data.debian import DebianError, Toolbox, unpack, unpacked_programs

HAVE_APT = all(shutil.which(t) for t in ("apt-get", "apt-cache", "dpkg", "dpkg-deb", "ldd"))


def test_a_recorded_folder_is_reused_without_fetching(tmp_path):
    fs = tmp_path / "fs" / "usr" / "bin"
    fs.mkdir(parents=True)
    shutil.copy2(shutil.which("ls"), fs / "ls")
    (tmp_path / ".unpacked.json").write_text(json.dumps({"requested": ["coreutils"], "versions": {"coreutils": "9"}}))
    box, paths, versions = unpacked_programs(["ls"], ["coreutils"], tmp_path, quiet=True)
    assert paths == {"ls": fs / "ls"} and versions == {"coreutils": "9"}
    assert not (tmp_path / "debs").exists()
    with pytest.raises(DebianError, match=r"cat: not found under .*fs \(was its package unpacked\?\)"):
        box.check("cat")


@pytest.mark.skipif(not HAVE_APT, reason="needs apt-get, dpkg and ldd")
def test_a_folder_unpacked_elsewhere_is_topped_up_with_the_missing_library(tmp_path):
    # flite without its dependencies: the folder as a machine with libflite1 installed would leave it.
    if shutil.which("flite"):
        pytest.skip("flite is installed here, so its library would not be missing")
    try:
        unpack(["flite"], tmp_path, with_deps=False, quiet=True)
    except DebianError as e:
        pytest.skip(f"the Debian archive cannot be reached: {e}")
    box = Toolbox(tmp_path / "fs")
    assert "libflite.so.1" in box.missing_libraries("flite")
    with pytest.raises(DebianError, match=r"flite cannot find shared libraries \[.*'libflite.so.1'"):
        box.check("flite")
    box, paths, versions = unpacked_programs(["flite"], ["flite"], tmp_path, quiet=True)
    assert box.missing_libraries("flite") == []
    assert "libflite1" in versions and "flite" in versions
    assert json.loads((tmp_path / ".unpacked.json").read_text())["versions"] == versions
    assert paths["flite"].is_file()


@pytest.mark.skipif(not HAVE_APT, reason="needs apt-get, dpkg and ldd")
def test_a_folder_that_cannot_be_topped_up_names_the_programs_and_their_libraries(tmp_path, monkeypatch):
    # flite without its library, on a machine whose apt knows no packages (offline, empty lists)
    if shutil.which("flite"):
        pytest.skip("flite is installed here, so its library would not be missing")
    try:
        unpack(["flite"], tmp_path / "tools", with_deps=False, quiet=True)
    except DebianError as e:
        pytest.skip(f"the Debian archive cannot be reached: {e}")
    lists = tmp_path / "apt" / "lists"
    (lists / "partial").mkdir(parents=True)
    (tmp_path / "apt" / "parts").mkdir()
    conf = tmp_path / "apt" / "apt.conf"
    conf.write_text(f'Dir::State::Lists "{lists}";\nDir::Cache "{tmp_path / "apt"}";\n'
                    f'Dir::Etc::SourceList "{tmp_path / "apt" / "none.list"}";\n'
                    f'Dir::Etc::SourceParts "{tmp_path / "apt" / "parts"}";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))
    with pytest.raises(DebianError) as err:
        unpacked_programs(["flite"], ["flite"], tmp_path / "tools", quiet=True)
    msg = str(err.value)
    assert "flite needs libflite.so.1" in msg and str(tmp_path / "tools" / "fs") in msg
    assert "apt-cache depends failed" in msg and "dpkg -x" in msg
