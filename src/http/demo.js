const out = document.getElementById('out');
const pathLabel = document.getElementById('path');
const errorLine = document.getElementById('error');
// Every button's work goes through this: a request that cannot be made
// (server down, network gone) is said on the page, never an uncaught error.
const guarded = (work) => async (e) => {
  if (e && e.preventDefault) { e.preventDefault(); }
  try {
    await work();
  } catch (err) {
    out.textContent = 'Request failed: ' + (err && err.message ? err.message : err) + '. Is the server running?';
    pathLabel.textContent = '–';
    errorLine.textContent = 'request failed';
  }
};
// The path label shows only which check answered; errors get their own line.
const show = async (r) => {
  const body = await r.json().catch(() => ({}));
  out.textContent = r.status + ' ' + JSON.stringify(body, null, 2);
  pathLabel.textContent = ['short', 'long', 'fallback'].includes(body.path) ? body.path : '–';
  errorLine.textContent = r.ok ? '' : 'Error: ' + (body.error || r.status) + (body.message ? ' (' + body.message + ')' : '');
  return body;
};
const post = (url, body) => fetch(url, {
  method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify(body),
});
const remember = () => document.getElementById('remember').checked;
document.getElementById('login').addEventListener('submit', guarded(async () => {
  const r = await post('/v1/login', { username: document.getElementById('username').value,
                                      password: document.getElementById('password').value, device: 'pc',
                                      remember: remember() });
  const body = await show(r);
  if (r.ok) { out.textContent = 'Logged in as ' + body.user_id + ' (session ' + body.session_id + ')'; }
}));
document.getElementById('code-send').addEventListener('submit', guarded(async () => {
  const r = await post('/v1/login/code/send', { destination: document.getElementById('destination').value });
  const body = await show(r);
  if (r.status === 404) { out.textContent = 'One-time-code login is off: set code_login.enabled = true.'; }
  else if (r.ok) { out.textContent = 'Code sent (valid until ' + body.expires_at + '). With the log sender it is in the server log.'; }
}));
document.getElementById('code-login').addEventListener('submit', guarded(async () => {
  const r = await post('/v1/login/code', { destination: document.getElementById('destination').value,
                                           code: document.getElementById('code').value, device: 'pc',
                                           remember: remember() });
  const body = await show(r);
  if (r.ok) { out.textContent = 'Logged in as ' + body.user_id + ' (session ' + body.session_id + ')'; }
}));
document.getElementById('whoami').addEventListener('click', guarded(async () => {
  await show(await fetch('/v1/verify', { credentials: 'same-origin' }));
}));
document.getElementById('logout').addEventListener('click', guarded(async () => {
  await show(await fetch('/v1/logout', { method: 'POST', credentials: 'same-origin' }));
}));

// "Your sessions": every session of this user, where it was started and
// last seen; any other one can be ended. Text only (no HTML from data).
const sessionList = document.getElementById('sessions');
let sessions = [];
const endSession = async (sid) => {
  const r = await fetch('/v1/sessions/' + encodeURIComponent(sid), { method: 'DELETE', credentials: 'same-origin' });
  await show(r);
};
const listSessions = async () => {
  const r = await fetch('/v1/sessions', { credentials: 'same-origin' });
  const body = await show(r);
  sessionList.replaceChildren();
  sessions = r.ok ? body.sessions : [];
  if (!r.ok) {
    const li = document.createElement('li');
    li.textContent = 'Log in to see your sessions.';
    sessionList.append(li);
    return;
  }
  for (const s of sessions) {
    const li = document.createElement('li');
    li.dataset.sid = s.session_id;
    const what = document.createElement('div');
    if (s.current) {
      const b = document.createElement('span');
      b.className = 'this';
      b.textContent = 'This device · ';
      what.append(b);
    }
    if (s.bound) {
      const k = document.createElement('span');
      k.className = 'bound';
      k.title = 'Bound to a key kept on that device: its cookies are worthless anywhere else';
      k.textContent = 'Device-bound · ';
      what.append(k);
    }
    what.append((s.device || 'device unknown') + ' · ' + (s.ip || 'address unknown') + ' · ' + (s.user_agent || 'browser unknown'));
    const when = document.createElement('div');
    when.textContent = 'started ' + (s.created || 'unknown') + ' · last seen ' + s.last_seen;
    li.append(what, when);
    if (!s.current) {
      const end = document.createElement('button');
      end.className = 'end';
      end.textContent = 'End this session';
      end.addEventListener('click', guarded(async () => { await endSession(s.session_id); await listSessions(); }));
      li.append(end);
    }
    sessionList.append(li);
  }
};
document.getElementById('list-sessions').addEventListener('click', guarded(listSessions));
document.getElementById('end-others').addEventListener('click', guarded(async () => {
  await listSessions();
  for (const s of sessions.filter((s) => !s.current)) { await endSession(s.session_id); }
  await listSessions();
}));
