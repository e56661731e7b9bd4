// The web page's HTML, CSS and script, shipped inside the binary: no build step, no CDN, no
// external fonts. The script is a file of its own (`/ui/assets/app.js`) so the Content-Security-
// Policy can forbid inline script; it writes data into the page with `textContent` only.

enum UIAssets {
    /// The page; the data arrives by server-sent events. `csrf` is the session's CSRF token.
    static func page(csrf: String) -> String {
        """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta name="skywire-csrf" content="\(escapeHTML(csrf))">
        <title>Skywire visor</title>
        <link rel="stylesheet" href="/ui/assets/app.css">
        <script src="/ui/assets/app.js" defer></script>
        </head>
        <body>
        <header>
          <h1>Skywire visor</h1>
          <span id="live" class="badge off">connecting…</span>
          <button id="logout" class="link" type="button">Log out</button>
        </header>
        <main>
          <section class="card">
            <h2>Visor</h2>
            <dl class="facts">
              <dt>Public key</dt><dd><code id="visor-key">…</code></dd>
              <dt>Control</dt><dd id="visor-rpc">…</dd>
              <dt>Discovery</dt><dd id="visor-discovery">…</dd>
              <dt>Direct (stcpr)</dt><dd id="visor-stcpr">…</dd>
              <dt>sudph</dt><dd id="visor-sudph">…</dd>
              <dt>Version</dt><dd id="visor-version">…</dd>
            </dl>
          </section>
          <section class="card">
            <h2>Relays</h2>
            <table id="relays"><thead><tr><th>Public key</th><th>Address</th></tr></thead><tbody></tbody></table>
          </section>
          <section class="card">
            <h2>Sessions</h2>
            <table id="sessions"><thead><tr><th>#</th><th>Transport</th><th>Remote visor</th><th>Streams</th><th>RTT</th><th class="num">In</th><th class="num">Out</th></tr></thead><tbody></tbody></table>
          </section>
          <section class="card">
            <h2>Forwards <small>(skynet clients)</small></h2>
            <table id="forwards"><thead><tr><th>Name</th><th>State</th><th>Local</th><th>Remote</th><th>Mode</th><th>Via</th><th>Conns</th><th class="num">In</th><th class="num">Out</th><th>Error</th><th></th></tr></thead><tbody></tbody></table>
            <form id="forward-form" class="inline" autocomplete="off">
              <h3>Start a forward</h3>
              <label>Remote public key <input name="pk" size="40" required></label>
              <label>Remote port <input name="remote" size="6" required></label>
              <label>Local port <input name="local" size="6" value="0" required></label>
              <label>Network <select name="network"><option value="auto">auto</option><option value="skynet">skynet (direct)</option><option value="dmsg">dmsg (relay)</option></select></label>
              <label class="check"><input type="checkbox" name="raw_tcp" checked> raw TCP</label>
              <label>Name <input name="name" size="14" placeholder="optional"></label>
              <button type="submit">Start</button>
              <p class="message" id="forward-message" role="status"></p>
            </form>
          </section>
          <section class="card">
            <h2>Exposed ports <small>(skynet servers)</small></h2>
            <table id="servers"><thead><tr><th>Name</th><th>State</th><th>Ports</th><th>Whitelist</th><th>Conns</th><th>Refused</th><th class="num">In</th><th class="num">Out</th><th></th></tr></thead><tbody></tbody></table>
            <form id="expose-form" class="inline" autocomplete="off">
              <h3>Expose ports</h3>
              <label>Ports <input name="ports" size="12" placeholder="8080,3000" required></label>
              <label>Whitelist <input name="whitelist" size="30" placeholder="keys, comma-separated (empty: any visor)"></label>
              <label>Name <input name="name" size="14" placeholder="optional"></label>
              <label>Backend timeout <input name="backend_timeout" size="5" placeholder="30"></label>
              <label class="check"><input type="checkbox" name="preserve_host"> preserve Host</label>
              <button type="submit">Expose</button>
              <p class="message" id="expose-message" role="status"></p>
            </form>
          </section>
        </main>
        </body>
        </html>
        """
    }

    /// What an unauthenticated browser gets: how to log in (`rpc`: the address it asked, already
    /// checked to be loopback).
    static func notLoggedIn(reason: String?, rpc: String?) -> String {
        """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <title>Skywire visor: log in</title>
        <link rel="stylesheet" href="/ui/assets/app.css">
        </head>
        <body>
        <main class="login">
          <section class="card">
            <h1>Skywire visor</h1>
            \(reason.map { "<p class=\"message error\">\(escapeHTML($0))</p>" } ?? "<p>You are not logged in.</p>")
            <p>Run this as the visor's owner and open the URL it prints:</p>
            <pre><code>skywire cli visor ui --rpc \(escapeHTML(rpc ?? "ADDR"))</code></pre>
            <p>The link works once, within a minute.</p>
          </section>
        </main>
        </body>
        </html>
        """
    }

    static let css = """
    :root { --bg: #f4f6f8; --card: #fff; --fg: #1d2330; --muted: #667085; --line: #e3e7ec; --accent: #2563eb; --ok: #15803d; --bad: #b42318; }
    * { box-sizing: border-box; }
    body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--fg); }
    header { display: flex; align-items: center; gap: 12px; padding: 12px 24px; background: #111827; color: #fff; }
    header h1 { font-size: 18px; margin: 0; flex: 1; }
    main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 40px; display: grid; gap: 16px; }
    main.login { max-width: 560px; padding-top: 60px; }
    .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; }
    h2 { font-size: 15px; margin: 0 0 10px; }
    h2 small { color: var(--muted); font-weight: normal; }
    h3 { font-size: 13px; margin: 0; width: 100%; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
    code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
    pre { background: #f1f3f5; padding: 10px; border-radius: 6px; }
    .facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
    .facts dt { color: var(--muted); }
    .facts dd { margin: 0; word-break: break-all; }
    table { width: 100%; border-collapse: collapse; }
    th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
    th { color: var(--muted); font-weight: 600; font-size: 12px; }
    td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
    td.err { color: var(--bad); white-space: normal; }
    tbody tr.empty td { color: var(--muted); font-style: italic; }
    .state-running { color: var(--ok); font-weight: 600; }
    .state-errored { color: var(--bad); font-weight: 600; }
    form.inline { display: flex; flex-wrap: wrap; align-items: flex-end; gap: 8px 12px; margin-top: 14px; padding-top: 12px; border-top: 1px dashed var(--line); }
    label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); gap: 2px; }
    label.check { flex-direction: row; align-items: center; gap: 4px; color: var(--fg); padding-bottom: 6px; }
    input, select { font: inherit; padding: 5px 7px; border: 1px solid #c9d0d8; border-radius: 5px; }
    button { font: inherit; padding: 6px 14px; border: 0; border-radius: 5px; background: var(--accent); color: #fff; cursor: pointer; }
    button.stop { background: #fff; color: var(--bad); border: 1px solid var(--bad); padding: 2px 10px; }
    button.link { background: transparent; color: #cbd5e1; padding: 0; }
    .badge { font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #374151; }
    .badge.on { background: var(--ok); }
    .message { width: 100%; margin: 4px 0 0; min-height: 1.4em; }
    .message.error { color: var(--bad); }
    .message.ok { color: var(--ok); }
    """

    static let script = #"""
    "use strict";
    (function () {
      const csrf = document.querySelector('meta[name="skywire-csrf"]').content;
      const $ = (id) => document.getElementById(id);

      function fmtBytes(n) {
        const units = ["B", "KiB", "MiB", "GiB", "TiB"];
        let v = n, i = 0;
        while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
        return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
      }
      function short(key) { return key ? key.slice(0, 8) + "…" + key.slice(-4) : "-"; }
      function cell(tr, text, cls) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
        return td;
      }
      function bytesCell(tr, n, cls) {
        const td = cell(tr, fmtBytes(n), "num " + cls);
        td.dataset.value = String(n);
        td.title = n + " bytes";
      }
      function fill(tableId, rows, columns, build) {
        const body = $(tableId).tBodies[0];
        body.replaceChildren();
        if (rows.length === 0) {
          const tr = document.createElement("tr");
          tr.className = "empty";
          const td = cell(tr, "none");
          td.colSpan = columns;
          body.appendChild(tr);
          return;
        }
        for (const row of rows) {
          const tr = document.createElement("tr");
          build(tr, row);
          body.appendChild(tr);
        }
      }
      function stopButton(tr, kind, name) {
        const td = document.createElement("td");
        const b = document.createElement("button");
        b.type = "button";
        b.className = "stop";
        b.textContent = "Stop";
        b.addEventListener("click", () => stop(kind, name, b));
        td.appendChild(b);
        tr.appendChild(td);
      }

      function render(s) {
        const v = s.visor;
        $("visor-key").textContent = v.public_key;
        $("visor-rpc").textContent = v.rpc;
        $("visor-discovery").textContent = v.discovery;
        $("visor-stcpr").textContent = v.stcpr || "off";
        $("visor-sudph").textContent = v.sudph ? v.sudph + " (public " + (v.sudph_public || "not bound yet") + ")" : "off";
        $("visor-version").textContent = v.version;
        fill("relays", v.relays, 2, (tr, r) => { cell(tr, r.public_key); cell(tr, r.address); });
        fill("sessions", v.sessions, 7, (tr, x) => {
          tr.dataset.id = String(x.id);
          cell(tr, String(x.id)); cell(tr, x.type + (x.relay ? " via " + short(x.relay) : "")); cell(tr, x.remote_pk).title = x.remote_pk;
          cell(tr, String(x.streams));
          cell(tr, x.rtt_ms == null ? "-" : x.rtt_ms.toFixed(2) + " ms", "rtt");
          bytesCell(tr, x.bytes_in, "bytes-in"); bytesCell(tr, x.bytes_out, "bytes-out");
        });
        fill("forwards", s.forwards, 11, (tr, f) => {
          tr.dataset.name = f.name;
          cell(tr, f.name); cell(tr, f.state, "state state-" + f.state);
          cell(tr, f.local_address);
          cell(tr, short(f.remote_pk) + ":" + f.remote_port).title = f.remote_pk;
          cell(tr, f.mode); cell(tr, (f.transport || f.network) + (f.relay ? " via " + short(f.relay) + "@" + f.relay_addr : ""));
          cell(tr, f.connections_open + " / " + f.connections_total);
          bytesCell(tr, f.bytes_in, "bytes-in"); bytesCell(tr, f.bytes_out, "bytes-out");
          cell(tr, f.error || (f.direct_error ? "direct: " + f.direct_error : ""), "err");
          stopButton(tr, "forwards", f.name);
        });
        fill("servers", s.servers, 9, (tr, x) => {
          tr.dataset.name = x.name;
          cell(tr, x.name); cell(tr, x.state, "state state-" + x.state);
          cell(tr, x.ports.join(","), "ports");
          cell(tr, x.whitelist ? x.whitelist.length + " key(s)" : "open (any visor)");
          cell(tr, x.connections_open + " / " + x.connections_total);
          cell(tr, String(x.refused));
          bytesCell(tr, x.bytes_in, "bytes-in"); bytesCell(tr, x.bytes_out, "bytes-out");
          stopButton(tr, "servers", x.name);
        });
      }

      async function post(path, body) {
        const r = await fetch("/ui/api/" + path, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-Skywire-CSRF": csrf },
          body: JSON.stringify(body),
        });
        let answer = null;
        try { answer = await r.json(); } catch (e) { answer = null; }
        if (r.status === 401) { location.reload(); }
        if (!r.ok) throw new Error(answer && answer.error ? answer.error : "the visor answered " + r.status);
        return answer;
      }
      async function refresh() {
        const r = await fetch("/ui/api/state", { credentials: "same-origin" });
        if (r.ok) render(await r.json());
      }
      function say(id, text, ok) {
        const p = $(id);
        p.textContent = text;
        p.className = "message " + (ok ? "ok" : "error");
      }
      async function stop(kind, name, button) {
        button.disabled = true;
        const id = kind === "servers" ? "expose-message" : "forward-message";
        try {
          const a = await post(kind + "/stop", { name: name });
          say(id, "stopped " + a.stopped.join(", "), true);
        } catch (e) {
          say(id, "error: " + e.message, false);
        }
        await refresh();
      }

      $("expose-form").addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const f = ev.target.elements;
        try {
          const a = await post("servers", {
            ports: f.ports.value, whitelist: f.whitelist.value, name: f.name.value,
            backend_timeout: f.backend_timeout.value, preserve_host: f.preserve_host.checked,
          });
          say("expose-message", a.name + ": exposing " + a.ports.join(","), true);
          await refresh();
        } catch (e) {
          say("expose-message", "error: " + e.message, false);
        }
      });
      $("forward-form").addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const f = ev.target.elements;
        say("forward-message", "starting…", true);
        try {
          const a = await post("forwards", {
            pk: f.pk.value, remote: f.remote.value, local: f.local.value,
            raw_tcp: f.raw_tcp.checked, network: f.network.value, name: f.name.value,
          });
          say("forward-message", a.name + ": " + a.local_address + " -> " + short(a.remote_pk) + ":" + a.remote_port, true);
          await refresh();
        } catch (e) {
          say("forward-message", "error: " + e.message, false);
        }
      });
      $("logout").addEventListener("click", async () => {
        try { await post("logout", {}); } finally { location.reload(); }
      });

      const events = new EventSource("/ui/api/events");
      events.onmessage = (ev) => {
        $("live").textContent = "live";
        $("live").className = "badge on";
        render(JSON.parse(ev.data));
      };
      events.onerror = () => {
        $("live").textContent = "reconnecting…";
        $("live").className = "badge off";
      };
    })();
    """#
}

/// Escapes text for HTML element content and quoted attributes.
func escapeHTML(_ text: String) -> String {
    var out = ""
    for ch in text {
        switch ch {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.append(ch)
        }
    }
    return out
}
