"""The chain form driven from the keyboard and the mouse: define a chain, validate it live with the
validator's messages, save it keeping the file's comments."""
from __future__ import annotations

from engine import spec
from ban_tui.app import BanApp
from ban_tui.screens.experiments import ExperimentsPane
from test_tui_support import CONFIG, built, wait_for


async def type_into(pilot, selector: str, text: str) -> None:
    await pilot.click(selector)
    await pilot.press("end", "shift+home", "backspace", *text)


def form_app(tmp_path, text: str = CONFIG):
    """The config file written, and the app on it."""
    config = tmp_path / "experiments.toml"
    config.write_text(text)
    return config, BanApp(config, tmp_path / "runs")


def problems_text(app) -> str:
    return str(app.experiments.query_one("#problems").render())


async def test_define_a_digits_chain_and_save_it_keeping_comments(tmp_path):
    config, app = form_app(tmp_path)
    async with app.run_test(size=(140, 50)) as pilot:
        await built(pilot)
        pane: ExperimentsPane = app.experiments
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: pane.draft.source is None and app.query("#model-1"))
        await type_into(pilot, "#name", "digits-chain")
        await type_into(pilot, "#epochs", "1")
        await type_into(pilot, "#ensembles", "1, 2")
        await pilot.press("ctrl+g")                                   # BAN-2
        await wait_for(pilot, lambda: app.query("#objective-2"))
        await pilot.click("#objective-2")                             # ban -> ban+l
        await pilot.press("down", "enter")
        await type_into(pilot, "#model-2", "preact-resnet-18")        # a cross-architecture student
        await pilot.click("#up-2")                                    # it becomes BAN-1
        await wait_for(pilot, lambda: [r.model for r in pane.draft.rows][1] == "preact-resnet-18")
        assert "✓ valid" in problems_text(app)
        assert config.read_text() == CONFIG                           # nothing written before saving
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: config.read_text() != CONFIG)
    text = config.read_text()
    assert text.startswith(CONFIG)                                    # comments and layout kept
    exp = spec.load(config).experiments["digits-chain"]
    assert [(g.objective, g.model, g.teacher) for g in exp.generations] == [
        ("ce", "cnn-small", None), ("ban+l", "preact-resnet-18", 0), ("ban", "cnn-small", 1)]
    assert exp.dataset.name == "digits" and exp.generations[1].training.epochs == 1 and exp.ensembles == [1, 2]


async def test_problems_show_live_with_the_validators_messages_and_block_saving(tmp_path):
    config, app = form_app(tmp_path)
    async with app.run_test(size=(140, 50)) as pilot:
        await built(pilot)
        pane = app.experiments
        await wait_for(pilot, lambda: pane.draft.name == "tiny")
        await type_into(pilot, "#ensembles", "5")
        text = await wait_for(pilot, lambda: "between 1 and" in problems_text(app) and problems_text(app))
        # exactly what `ban validate` says about the edited text, file:line included
        assert f"{config}:" in text and "experiment[0].ensembles: expected each k between 1 and the number of " \
               "student generations (2), found 5" in text
        await type_into(pilot, "#epochs", "x1")
        assert await wait_for(pilot, lambda: "epochs: expected a whole number" in problems_text(app)
                              or "✓" not in problems_text(app))
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        assert config.read_text() == CONFIG
        await type_into(pilot, "#ensembles", "2")
        await type_into(pilot, "#epochs", "3")
        await wait_for(pilot, lambda: "✓ valid" in problems_text(app))
        await pilot.click("#save")
        await wait_for(pilot, lambda: config.read_text() != CONFIG)
    changed = [line for line in config.read_text().splitlines() if line not in CONFIG.splitlines()]
    assert changed == ["epochs = 3"]


async def test_remove_and_reorder_generations_with_buttons(tmp_path):
    config, app = form_app(tmp_path)
    async with app.run_test(size=(140, 50)) as pilot:
        await built(pilot)
        pane = app.experiments
        await pilot.click("#remove-2")
        await wait_for(pilot, lambda: len(pane.draft.rows) == 2)
        # Ens*2 now needs a second student: the validator says so
        assert await wait_for(pilot, lambda: "found 2" in problems_text(app))
        await type_into(pilot, "#ensembles", "1")
        await wait_for(pilot, lambda: "✓ valid" in problems_text(app))
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: config.read_text() != CONFIG)
    exp = spec.load(config).experiments["tiny"]
    assert len(exp.generations) == 2 and exp.ensembles == [1]
    assert "# experiments for the TUI tests" in config.read_text()


async def test_a_broken_config_opens_with_the_validators_message(tmp_path):
    config = tmp_path / "experiments.toml"
    config.write_text(CONFIG.replace('epochs = 2', 'epochs = 2 2'))
    app = BanApp(config, tmp_path / "runs")
    async with app.run_test(size=(140, 50)) as pilot:
        text = await wait_for(pilot, lambda: "TOML syntax error" in problems_text(app) and problems_text(app))
        assert f"{config}:{CONFIG.splitlines().index('epochs = 2') + 1}:" in text
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        assert "problem" in app.sub_title
    assert "epochs = 2 2" in config.read_text()
