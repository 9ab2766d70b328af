"""Help texts: every option and argument of every command says what it does."""

import typer.main

from cnnbench.cli import app


def commands():
    return typer.main.get_command(app).commands


def test_every_option_and_argument_has_help():
    missing = [f"{name} {param.opts[0]}" for name, command in commands().items()
               for param in command.params if not (getattr(param, "help", None) or "").strip()]
    assert missing == []


def test_train_help_names_every_task_not_only_fashion_mnist():
    text = commands()["train"].help
    assert not text.startswith("Train a model on Fashion-MNIST")
    assert "segmentation" in text and "--data" in text
