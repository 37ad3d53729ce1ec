"""Interaction files: a generic interactions file (CSV, TSV or JSON lines, with
configurable column names) and session click streams.

* interactions: Yelp reviews (user_id, business_id, stars, date), a tool-usage
  log (user_id, page, ts), integer-id recipe ratings, ... An optional
  ``min_rating`` keeps rows whose rating is >= it (and, with ``unrated_value``,
  rows holding that "no rating" value, Food.com's 0: a review is engagement),
  and an optional candidate catalogue file gives the catalog and candidate
  features; interactions whose candidate is not in the catalogue are dropped
  (and counted). Catalogue cells that hold Python list literals (Food.com's
  tags and ingredients, "['a', 'b']") become "a|b", like JSON lists. A
  catalogue id listed again takes its last row's features, and catalogue rows
  without a usable id are left out: both counted (``dropped_catalog_*``, where
  any). Read with ``--no-catalog-header``, a first row whose id names the id
  column (item_id, ``--candidate-col``) is refused: a header.
  Ids are trimmed of the whitespace around them (a line ending such as "\\r"
  included). Rows without a customer or candidate id (a blank cell, a JSON
  null) are dropped (and counted), here and in sessions, and so are rows with
  an id the services refuse in every request: one over ``MAX_ID_BYTES`` (UTF-8)
  or holding a NUL character (the catalogue leaves such ids out). Other control
  characters are kept: the services take them.
  Repeats of a row (the same customer, candidate and time: one event written
  twice) are dropped (and counted), here and in sessions. Without a time column
  a repeat is the same customer and candidate (whatever the rating): the first
  row is kept.
* sessions: click streams (SessionId, ItemId, Time as in YooChoose or
  RetailRocket): each session is a "customer", events are ordered by time
  within a session, sessions with a single event are dropped (and counted).

A time column holds epoch numbers or ISO dates, not both, every value finite;
anything else is refused naming the row and value. Times become
epoch seconds, what the services' request_time is: the column's largest number
names its unit (below 1e11 seconds, below 1e14 milliseconds, then micro- and
nanoseconds; ``info["time_unit"]``), and a column that also holds a number from
1e8 (1973 in seconds) up to that unit's start mixes units and is refused. Epoch
numbers whose latest decodes before 1980 or from 2100 on (compact dates such as
20200101, years, spreadsheet day serials) are refused naming the row, the value
and the date it decodes to; numbers counted up from below 1000 are counters and
kept. ``info["time_range"]`` gives the span read (UTC).
Interactions times are whole seconds; sessions keep the fraction (float64), to
order events within a second.

A CSV/TSV row must have the header's number of fields (more only if empty: a
trailing delimiter), an id must not hold a line break (a quote left open reads
the rows after it as one id), nor another field lines of the file with whole
rows' delimiters (a quote left open in a text column, closed by a later stray
one), a field that opens with a quote must end at its closing one ('"x"y' would
lose its quotes: CSV and TSV alike), and a damaged file (a cut or fake .gz, a
field past 16 Mi characters) is named: each is a ValueError naming the line.
A gzip file is read as one whatever its name (its magic bytes), and blank
lines before a header are layout. A JSON line must be an object, and a number
past what Python reads as one (4,300 digits: an id) is refused naming it. A
JSON id that is no string is its text as JSON writes it (7, true), a whole
float its integer (7.0, what pandas writes for an integer column with a gap,
is "7"); a float that lost its id's digits (a whole number past 2**53 with a
fraction or an exponent, NaN, Infinity, 1e400) is refused naming the row, as
is an id that opens with a byte order mark (files joined with ``cat``).
Quoted fields holding delimiters, line breaks and doubled quotes load. A
line repeating the header (files joined with ``cat``) is dropped (and counted);
a header line with other columns, or the same in another order, is refused
naming the line and both headers (its rows would be read from the first
header's column positions).

Both can keep only some event types (``event_col`` + ``events``: RetailRocket's
view / addtocart / transaction); the count of each type is in ``info``.

Loading is columnar: rows are parsed in chunks, ids are dictionary-encoded to
integer codes as they stream in, and the string arrays are materialised once at
the end, so peak memory stays close to the size of the result. What was read,
dropped and how fast is in ``Interactions.info``.

Modules: ``reading`` (a file's rows as chunks of columns, and every malformation
named), ``ids`` (ids encoded, unusable ones and repeated events dropped),
``values`` (numbers and times), ``catalogue`` (the candidate catalogue) and
``loaders`` (interactions files and sessions).
"""

from trainer.data.files.loaders import load_interactions_file, load_sessions
from trainer.data.files.reading import FORMATS, file_format

__all__ = ["FORMATS", "file_format", "load_interactions_file", "load_sessions"]
