"""The operator's web page: counts, trends, failures and a live view, served read-only from the records.

`ds2a web DB` serves a database; `ds2a inspect --web HOST:PORT` serves it while inspecting, with
the live annotated view. Charts are drawn on the server (matplotlib SVG) and the page's script
and style are files in the package, so a station with no internet shows everything.
"""
