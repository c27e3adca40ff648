from click.testing import CliRunner

from dream_cli.main import cli


def test_help_lists_the_program():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "text to image" in result.output
