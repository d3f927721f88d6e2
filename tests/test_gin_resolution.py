"""Gin file resolution does not depend on the working directory's contents.

After ``bash scripts/local.sh`` the repository root holds ``runs/``; gin's own
resolution took that folder for a Python package (``python -m`` puts the working
directory on ``sys.path``) and crashed on ``include 'runs/finetune_sni.gin'``, and a
stray ``models/base.gin`` in the working directory would have shadowed the
repository's.
"""
import gin
import pytest

from hyper_tasks import gin_utils


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture
def cluttered_cwd(tmp_path, monkeypatch):
  """A working directory with ``runs/`` and a shadowing ``models/base.gin``, on
  ``sys.path`` as under ``python -m``."""
  (tmp_path / "runs").mkdir()
  (tmp_path / "runs" / "finetune_sni.gin").write_text("this is not gin\n")
  (tmp_path / "models").mkdir()
  (tmp_path / "models" / "base.gin").write_text("MODEL_SIZE = 'shadowed'\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  return tmp_path


def test_includes_ignore_the_working_directory(cluttered_cwd):
  gin_utils.parse(["experiments/hint_finetune_sni.gin"],
                  ["MODEL_DIR = '/tmp/unused'"], finalize=False)
  assert gin.query_parameter("MODEL_SIZE/macro.value") == "base"
  assert gin.query_parameter("train.num_steps") is not None


def test_runs_folder_on_sys_path_without_a_file(tmp_path, monkeypatch):
  (tmp_path / "runs").mkdir()  # a namespace package to importlib
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  gin_utils.parse(["experiments/hint_finetune_t0.gin"],
                  ["MODEL_DIR = '/tmp/unused'"], finalize=False)
  assert gin.query_parameter("MIXTURE_OR_TASK_NAME/macro.value") == "t0_train"


def test_gin_state_restored_after_parse(cluttered_cwd):
  prefixes = list(gin.config._LOCATION_PREFIXES)  # pylint: disable=protected-access
  readers = list(gin.config._FILE_READERS)  # pylint: disable=protected-access
  gin_utils.parse(["experiments/hint_pretrain_c4.gin"], finalize=False)
  assert gin.config._LOCATION_PREFIXES == prefixes  # pylint: disable=protected-access
  assert gin.config._FILE_READERS == readers  # pylint: disable=protected-access


def test_user_file_includes_files_beside_it(tmp_path):
  own = tmp_path / "mine"
  own.mkdir()
  (own / "sizes.gin").write_text("ADAPTER_SIZE = 12\n")
  (own / "exp.gin").write_text("include 'experiments/hint_finetune_sni.gin'\n"
                               "include 'sizes.gin'\n")
  gin_utils.parse([str(own / "exp.gin")], ["MODEL_DIR = '/tmp/unused'"],
                  finalize=False)
  assert gin.query_parameter("ADAPTER_SIZE/macro.value") == 12


def test_missing_include_names_the_file(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'runs/no_such_run.gin'\n")
  with pytest.raises(gin_utils.GinConfigError, match="no_such_run.gin"):
    gin_utils.parse([str(bad)], finalize=False)


# The README's train command from the repository root with runs/ present, as a
# process: tests/train/test_preflight.py::test_readme_command_from_repo_root_with_runs_dir_on_a_2x2_mesh.
