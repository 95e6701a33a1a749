// What the page shows, as pure functions of their inputs (unit-tested under Node's test runner,
// tests/page.test.mjs): sizes, durations, a finished transfer's summary, the device id in
// groups, and whether this browser can pick a folder.

/** Bytes in binary units: `20.0 MiB`. */
export function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** A duration in seconds as `42 s`, `3 min 5 s`, `1 h 2 min`; `…` when unknown. */
export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '…';
  if (seconds < 10) return `${(Math.round(seconds * 10) / 10).toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** A finished transfer's line: how much, how long and the average rate of the last leg (a
 * resumed transfer counts from where it resumed). `from` is the leg's first byte; times are
 * milliseconds since the epoch. */
export function finishedSummary({ size, from = 0, startedAt, finishedAt }) {
  const moved = Math.max(0, size - from);
  const seconds = (finishedAt - startedAt) / 1000;
  if (!Number.isFinite(seconds) || seconds < 0 || !startedAt || !finishedAt) return bytes(size);
  const rate = seconds > 0 ? moved / seconds : 0;
  return `${bytes(size)} in ${duration(seconds)} · ${rate > 0 ? `${bytes(rate)}/s` : '–'} average`;
}

/** The 52-character device id in groups of 4, so that a narrow screen wraps it only between
 * groups (and never inside one). */
export function idGroups(id) {
  const groups = [];
  for (let i = 0; i < id.length; i += 4) groups.push(id.slice(i, i + 4));
  return groups;
}

/** Whether the browser lets the user pick a whole folder: a desktop browser with `webkitdirectory`
 * on file inputs or `showDirectoryPicker`. Phones and tablets expose the attribute but offer no
 * folder picker (Android opens the file picker, iOS ignores it), so they get files only. */
export function canPickFolders(input, nav, win) {
  const mobile = nav.userAgentData?.mobile === true
    || /Android|iPhone|iPad|iPod|Mobile/.test(nav.userAgent || '')
    // iPadOS presents itself as a Mac; a Mac has no touch points.
    || (/Macintosh/.test(nav.userAgent || '') && (nav.maxTouchPoints || 0) > 1);
  if (mobile) return false;
  return 'webkitdirectory' in input || typeof win?.showDirectoryPicker === 'function';
}
