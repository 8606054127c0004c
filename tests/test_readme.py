"""The README's reference sections are derived from the code: they cannot drift from it."""

from __future__ import annotations

from pathlib import Path

from study.planning import record

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_shows_the_record_as_the_code_defines_it():
    text = README.read_text()
    start = text.index("<!-- record reference")
    body = text[text.index("\n", start) + 1: text.index("<!-- end of record reference -->")]
    assert body.strip() == record.reference().strip(), \
        "run `python -m study.planning.record` and paste it into the README"


def test_the_readme_shows_a_dataset_declarations_keys_as_the_code_defines_them():
    from trainables.data import declaration

    text = README.read_text()
    start = text.index("<!-- declaration reference")
    body = text[text.index("\n", start) + 1: text.index("<!-- end of declaration reference -->")]
    assert body.strip() == declaration.reference().strip(), \
        "paste the output of `python -c 'from trainables.data import declaration; print(declaration.reference())'`"


def test_the_readme_shows_the_study_file_keys_as_the_spec_documents_them():
    import study.planning.spec

    def yaml_block(text: str) -> str:
        start = text.index("```yaml\nname: ")
        return text[start: text.index("```", start + 3)]

    assert yaml_block(README.read_text()) == yaml_block(study.planning.spec.__doc__)
