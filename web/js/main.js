// Boot: read the site's config.json (where the broker is), then start the controller.
// window.gochat is the controller, for the browser tests and benchmarks.

import mqtt from 'mqtt';
import { App } from './app.js';
import { View } from './view.js';

async function brokerUrl() {
  try {
    const response = await fetch('config.json', { cache: 'no-store' });
    if (response.ok) {
      const config = await response.json();
      if (typeof config.broker_url === 'string') return config.broker_url;
    }
  } catch {
    // no config.json: the broker's default WebSocket ports on this host
  }
  return location.protocol === 'https:' ? `wss://${location.hostname}:8081/` : `ws://${location.hostname}:8080/`;
}

const view = new View(document);
window.gochat = new App({ mqtt, brokerUrl: await brokerUrl(), view });
