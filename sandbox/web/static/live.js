// Live pages: one EventSource on /events?after=FEED (it resumes with Last-Event-ID by itself); on an event,
// every element marked data-live="ENV" (or "*") gets the htmx event "live", and reloads itself.
(function () {
  "use strict";
  if (!window.EventSource || !document.querySelector("[data-live]")) { return; }
  // start after the feed id the page was rendered at (a change while it loaded is not missed)
  var meta = document.querySelector('meta[name="sbx-feed"]');
  var after = meta && /^[0-9]{1,18}$/.test(meta.content) ? "?after=" + meta.content : "";
  var es = new EventSource("/events" + after);
  var pending = null;
  function fire(env) {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var want = el.getAttribute("data-live");
      if (want === "*" || want === env) { htmx.trigger(el, "live"); }
    });
  }
  function on(ev) {
    var env = null;
    try { env = JSON.parse(ev.data).env; } catch (e) { return; }
    clearTimeout(pending);  // a burst of steps: one reload
    pending = setTimeout(function () { fire(env); }, 100);
  }
  ["job", "deploy", "event"].forEach(function (k) { es.addEventListener(k, on); });
  es.addEventListener("reset", function () { fire("*"); });
  es.addEventListener("end", function () { es.close(); });
})();
