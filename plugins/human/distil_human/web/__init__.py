"""The review desk in a browser (``distil review RUN_DIR --web``); needs the ``web`` extra.

    desk.py     the run, the store and the rules of a save, free of HTTP
    app.py      the Starlette routes and the request guard (token, same-origin posts)
    serve.py    binding the address and running uvicorn
    templates/  the pages (Jinja2, inline CSS and a small inline script; nothing fetched)
"""
