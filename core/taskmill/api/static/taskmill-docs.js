// Starts Swagger UI on the taskmill docs page. A file of its own, so that the page works under a
// Content-Security-Policy of script-src 'self' (no inline script).
window.addEventListener("load", function () {
  "use strict";
  var node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    // the default validator badge calls validator.swagger.io; nothing may leave this host
    validatorUrl: null
  });
});
