// The web client's configuration. `make run` serves a copy of this folder
// with its own config.js (its ports); deployed, set these from the stack's
// outputs (docs/web-client.md).
window.PAYCACHE_CONFIG = {
  // The HTTP API (the stack's ApiUrl output) and the WebSocket API
  // (WebSocketUrl).
  api: "http://127.0.0.1:9000",
  ws: "ws://127.0.0.1:9001",
  // The wallet whose balance the page shows (?wallet=<id> overrides it).
  wallet: "00000000-0000-4000-9000-000000000008",
  // Deployed, the Cognito hosted UI (authorization code with PKCE):
  // auth: {
  //   domain: "https://<prefix>.auth.<region>.amazoncognito.com",  // HostedUiDomain
  //   client_id: "<WebClientId>",
  //   redirect_uri: "https://app.example.com/",   // one of CallbackUrls
  //   logout_uri: "https://app.example.com/",     // one of LogoutUrls
  //   scope: "openid email",
  // },
  auth: null,
};
