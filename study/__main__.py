from study.cli import app

app()
