// The login page: the server sends a failed login back here with ?failed=1 (no inline script: the CSP forbids it).
"use strict";
document.getElementById("error").hidden = !new URLSearchParams(location.search).has("failed");
