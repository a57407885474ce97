"""Server-rendered admin pages, one module a page: login.py, skills.py, users.py and
confirmation.py (what the skills page's disable and the users page's refund ask first);
shared.py holds what they share. Every change goes through the same services as the API.
app.py wires the pages (and ``shared.plain_inputs``) into the admin router."""
