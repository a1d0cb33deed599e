// ipywidgets' html-manager typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue), but the
// book loads MathJax 3: without this, every widget label throws "reading 'Queue'". Give MathJax 3 that call.
(function () {
  var hub = {Queue: function (job) {
    var mj = window.MathJax, el = job && job[2];
    if (el && mj && mj.typesetPromise) { mj.typesetPromise([el]).catch(function () {}); }
  }};
  var config = window.MathJax = window.MathJax || {};
  config.Hub = hub;  // until MathJax 3 has loaded (it moves this object to MathJax.config)
  var startup = config.startup = config.startup || {};
  var ready = startup.ready;
  startup.ready = function () {
    if (ready) { ready(); } else { window.MathJax.startup.defaultReady(); }
    window.MathJax.Hub = hub;
  };
})();
