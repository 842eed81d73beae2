// One clock on every page: times read "2026-12-02 16:00:44 UTC" as the server
// renders them, or, once the viewer picks it (the switch in the header, kept in
// localStorage), in the browser's zone: "2026-12-02 17:00:44 UTC+01:00". A
// countdown (a deadline) reads "in 2h5m" or "3m ago" instead, and keeps counting;
// its title has the moment.
var CLOCK = "botlnek.clock";
function inLocalZone() {
  try { return localStorage.getItem(CLOCK) === "local"; } catch (e) { return false; }
}
function pad(n) { return (n < 10 ? "0" : "") + n; }
function clockText(when, local) {
  if (!local) {
    return when.getUTCFullYear() + "-" + pad(when.getUTCMonth() + 1) + "-" +
      pad(when.getUTCDate()) + " " + pad(when.getUTCHours()) + ":" +
      pad(when.getUTCMinutes()) + ":" + pad(when.getUTCSeconds()) + " UTC";
  }
  var offset = -when.getTimezoneOffset();
  var zone = offset === 0 ? "UTC" : "UTC" + (offset > 0 ? "+" : "-") +
    pad(Math.floor(Math.abs(offset) / 60)) + ":" + pad(Math.abs(offset) % 60);
  return when.getFullYear() + "-" + pad(when.getMonth() + 1) + "-" +
    pad(when.getDate()) + " " + pad(when.getHours()) + ":" +
    pad(when.getMinutes()) + ":" + pad(when.getSeconds()) + " " + zone;
}
function localTimes(root) {
  // A part re-rendered live has no request to say the server's address: this page's.
  root.querySelectorAll(".origin").forEach(function (el) { el.textContent = location.origin; });
  var local = inLocalZone();
  root.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when)) { return; }
    if (el.classList.contains("countdown")) { el.title = clockText(when, local); }
    else { el.textContent = clockText(when, local); }
  });
  var toggle = document.getElementById("clock");
  if (toggle) {
    toggle.textContent = local ? "times in your zone" : "times in UTC";
    toggle.setAttribute("aria-pressed", local ? "true" : "false");
  }
  countdowns(root);
}
document.addEventListener("click", function (event) {
  if (!event.target.closest || !event.target.closest("#clock")) { return; }
  try { localStorage.setItem(CLOCK, inLocalZone() ? "utc" : "local"); } catch (e) { return; }
  localTimes(document);
});
function span(seconds) {
  var units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
  for (var i = 0; i < units.length - 1; i++) {
    if (seconds >= units[i][1]) {
      var rest = Math.floor((seconds % units[i][1]) / units[i + 1][1]);
      return Math.floor(seconds / units[i][1]) + units[i][0] + (rest ? rest + units[i + 1][0] : "");
    }
  }
  return seconds + "s";
}
function countdowns(root) {
  root.querySelectorAll("time.countdown[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when)) { return; }
    var seconds = Math.round((when - Date.now()) / 1000);
    el.textContent = seconds >= 0 ? "in " + span(seconds) : span(-seconds) + " ago";
    el.classList.toggle("passed", seconds < 0);
  });
}
document.addEventListener("DOMContentLoaded", function () { localTimes(document); });
document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
document.addEventListener("htmx:oobAfterSwap", function (event) { localTimes(event.target); });
setInterval(function () { countdowns(document); }, 1000);

// While the live socket is down, say so; and come back whatever the close code
// (htmx's ws extension reconnects by itself only after 1006, 1011, 1012, 1013).
// <body data-live> tells whether the page is connected: "open" or "down".
document.addEventListener("htmx:wsOpen", function () {
  document.body.dataset.live = "open";
  var banner = document.getElementById("connection");
  if (banner) { banner.classList.remove("down"); }
});
document.addEventListener("htmx:wsClose", function (event) {
  document.body.dataset.live = "down";
  var banner = document.getElementById("connection");
  if (banner) { banner.classList.add("down"); }
  var code = event.detail.event.code;
  if ([1006, 1011, 1012, 1013].indexOf(code) < 0) {
    setTimeout(function () { event.detail.socketWrapper.reconnect(); }, 1000);
  }
});

// The picture's marks: a tap (or click) shows the mark's details in a small
// popover under the picture; tapping elsewhere hides it. Each mark has a tap
// target around it (.hit) larger than a finger.
document.addEventListener("click", function (event) {
  var target = event.target.closest ? event.target.closest("[data-details]") : null;
  document.querySelectorAll("figure.picture .popover").forEach(function (box) {
    if (!target || !box.closest("figure").contains(target)) { box.hidden = true; }
  });
  if (!target || !target.closest("svg.picture")) { return; }
  var figure = target.closest("figure.picture");
  var box = figure.querySelector(".popover");
  var where = target.getBoundingClientRect();
  var frame = figure.getBoundingClientRect();
  box.textContent = target.getAttribute("data-details");
  box.hidden = false;
  var left = where.left + where.width / 2 - frame.left - box.offsetWidth / 2;
  box.style.left = Math.max(0, Math.min(left, frame.width - box.offsetWidth)) + "px";
  box.style.top = (where.bottom - frame.top + 4) + "px";
});
