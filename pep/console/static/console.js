// The console's one script: live updates of the decision stream (server-sent events).
// Served by Tessera itself; the pages carry no inline script.
"use strict";
