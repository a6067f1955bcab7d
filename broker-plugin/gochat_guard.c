/*
 * gochat_guard: a Mosquitto 2.0 plugin that keeps one client from hurting the others.
 *
 * Mosquitto's acl_file says who may write where, but not with which flags nor how
 * often. This plugin adds two rules to every PUBLISH (the ACL-check event, which
 * carries the retain flag), before the acl_file is consulted:
 *
 *   1. Retained only where the protocol retains. A retained PUBLISH is refused unless
 *      its sender is a server account or the topic is the sender's own presence: a
 *      device can no longer park messages on its request or audio topics, since the
 *      broker never stores them (PUBACK 0x87 at QoS 1, dropped at QoS 0).
 *   2. A flood stops at the broker. Past a rate a second on a topic prefix, a client's
 *      further messages there that second are refused the same way. Requests: 40 a
 *      second, twice the server's own limit (20 accepted and 20 answered 429 per user
 *      per second), which still applies to what passes; a flooding device never sits
 *      in the server's queue ahead of everyone else. Audio: 100 frames a second, twice
 *      the fastest legitimate stream, so a device cannot drown its room's listeners.
 *
 * Everything else is deferred to the acl_file. Options (plugin_opt_NAME VALUE):
 *
 *   servers       accounts exempt from both rules, comma-separated; a trailing '*' is
 *                 a prefix (default: gochat-server,gochat-server-*)
 *   own_retained  the one topic every client may retain on, %u standing for its
 *                 username (default: gochat/v1/presence/%u)
 *   limits        PREFIX=PER_SECOND,... the rates of rule 2, the first matching prefix
 *                 applying (default: gochat/v1/req/=40,gochat/v1/room/=100; the
 *                 acl_file lets devices write only their audio under room/); empty:
 *                 no limits
 *
 * Refusals are counted and logged at most once every 10 s, never once per message.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_SERVERS 16
#define MAX_LIMITS 8
#define MAX_TEXT 256
/* Rate windows: a client holds a slot per limited prefix only during a second in which
 * it published there, so the table needs room for the clients active in one second.
 * 16384 slots of 24 bytes (384 KiB). When PROBES slots in a row are taken, the message
 * passes unlimited (for requests, the server's own limit still holds). */
#define SLOTS 16384u
#define PROBES 32u
#define WINDOW_MS 1000
#define LOG_EVERY_MS 10000

struct window {
	uint64_t key; /* a hash of the client's username; 0: never used */
	int64_t start_ms;
	uint32_t count;
};

struct limit {
	char prefix[MAX_TEXT];
	unsigned long per_s;
};

struct guard {
	mosquitto_plugin_id_t *id;
	char servers[MAX_SERVERS][MAX_TEXT];
	int server_count;
	char own_retained[MAX_TEXT];
	struct limit limits[MAX_LIMITS];
	int limit_count;
	struct window *windows;
	/* refusals since the last log line, and the latest one */
	unsigned long retained_refused;
	unsigned long rate_refused;
	char latest[2 * MAX_TEXT];
	int64_t last_log_ms;
};

static struct guard guard;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool starts_with(const char *text, const char *prefix)
{
	return strncmp(text, prefix, strlen(prefix)) == 0;
}

static bool is_server(const char *username)
{
	for(int i = 0; i < guard.server_count; i++){
		const char *name = guard.servers[i];
		size_t len = strlen(name);
		if(len > 0 && name[len - 1] == '*'){
			if(strncmp(username, name, len - 1) == 0) return true;
		}else if(strcmp(username, name) == 0){
			return true;
		}
	}
	return false;
}

/* Whether `topic` is own_retained with %u replaced by `username` (one %u at most). */
static bool is_own_retained(const char *topic, const char *username)
{
	const char *mark = strstr(guard.own_retained, "%u");
	if(mark == NULL) return strcmp(topic, guard.own_retained) == 0;
	size_t head = (size_t)(mark - guard.own_retained);
	const char *tail = mark + 2;
	size_t user_len = strlen(username);
	size_t tail_len = strlen(tail);
	return strlen(topic) == head + user_len + tail_len
		&& strncmp(topic, guard.own_retained, head) == 0
		&& strncmp(topic + head, username, user_len) == 0
		&& strcmp(topic + head + user_len, tail) == 0;
}

static uint64_t hash(const char *text)
{
	uint64_t h = 14695981039346656037ull; /* FNV-1a */
	for(const unsigned char *c = (const unsigned char *)text; *c; c++){
		h = (h ^ *c) * 1099511628211ull;
	}
	return h ? h : 1;
}

/* Count one message of `username` under limit `rule` at `now`; whether it is past the
 * limit. A fixed one-second window per client and rule: at most twice the limit across
 * a window's edge (for requests, the server's exact sliding window then trims it). */
static bool over_limit(const char *username, int rule, int64_t now)
{
	unsigned long per_s = guard.limits[rule].per_s;
	uint64_t key = hash(username) + (uint64_t)rule * 0x9E3779B97F4A7C15ull;
	if(key == 0) key = 1;
	struct window *free_slot = NULL;
	for(unsigned i = 0; i < PROBES; i++){
		struct window *w = &guard.windows[(key + i) & (SLOTS - 1)];
		if(w->key == key){
			if(now - w->start_ms >= WINDOW_MS){
				w->start_ms = now;
				w->count = 0;
			}
			if(w->count <= per_s) w->count++;
			return w->count > per_s;
		}
		/* A slot idle for a whole window is free again. Keys are never placed past a
		 * slot that was never used, so the search ends there. */
		if(w->key == 0 || now - w->start_ms >= WINDOW_MS){
			if(free_slot == NULL) free_slot = w;
			if(w->key == 0) break;
		}
	}
	if(free_slot != NULL){
		free_slot->key = key;
		free_slot->start_ms = now;
		free_slot->count = 1;
	}
	return false;
}

static void refused(unsigned long *counter, const char *why, const char *username,
		const char *topic)
{
	(*counter)++;
	int64_t now = now_ms();
	if(now - guard.last_log_ms < LOG_EVERY_MS) return;
	snprintf(guard.latest, sizeof(guard.latest), "%s by %s on %s", why, username, topic);
	mosquitto_log_printf(MOSQ_LOG_WARNING,
			"gochat_guard: refused %lu retained publish(es) and %lu over a rate limit "
			"since the last report; latest: %s",
			guard.retained_refused, guard.rate_refused, guard.latest);
	guard.retained_refused = 0;
	guard.rate_refused = 0;
	guard.last_log_ms = now;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_acl_check *check = event_data;
	if(check->access != MOSQ_ACL_WRITE) return MOSQ_ERR_PLUGIN_DEFER;
	const char *username = mosquitto_client_username(check->client);
	/* No username: refused by the acl_file already (allow_anonymous false). */
	if(username == NULL || is_server(username)) return MOSQ_ERR_PLUGIN_DEFER;
	if(check->retain && !is_own_retained(check->topic, username)){
		refused(&guard.retained_refused, "retained", username, check->topic);
		return MOSQ_ERR_ACL_DENIED;
	}
	for(int rule = 0; rule < guard.limit_count; rule++){
		if(!starts_with(check->topic, guard.limits[rule].prefix)) continue;
		if(over_limit(username, rule, now_ms())){
			refused(&guard.rate_refused, "over the rate limit", username, check->topic);
			return MOSQ_ERR_ACL_DENIED;
		}
		break;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* ---------------------------------------------------------------- options */

static bool copy_text(char *dest, const char *value, const char *key)
{
	if(strlen(value) >= MAX_TEXT){
		mosquitto_log_printf(MOSQ_LOG_ERR, "gochat_guard: plugin_opt_%s is too long", key);
		return false;
	}
	strcpy(dest, value);
	return true;
}

/* Call `each` on every comma- or blank-separated item of option `key`'s `value`. */
static bool each_item(const char *value, const char *key, bool (*each)(char *item))
{
	char list[MAX_TEXT];
	if(!copy_text(list, value, key)) return false;
	char *rest = list;
	for(char *item = strtok_r(list, ", \t", &rest); item; item = strtok_r(NULL, ", \t", &rest)){
		if(!each(item)) return false;
	}
	return true;
}

/* One account name of plugin_opt_servers. */
static bool add_server(char *name)
{
	if(guard.server_count == MAX_SERVERS){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"gochat_guard: plugin_opt_servers names more than %d accounts", MAX_SERVERS);
		return false;
	}
	strcpy(guard.servers[guard.server_count++], name);
	return true;
}

static bool parse_servers(const char *value)
{
	guard.server_count = 0;
	return each_item(value, "servers", add_server);
}

/* One PREFIX=PER_SECOND of plugin_opt_limits. */
static bool parse_limit(char *item)
{
	char *equals = strrchr(item, '=');
	char *end = NULL;
	errno = 0;
	unsigned long per_s = equals ? strtoul(equals + 1, &end, 10) : 0;
	if(equals == NULL || equals == item || errno || end == equals + 1 || *end != '\0'
			|| equals[1] == '-' || per_s == 0 || per_s > 1000000){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"gochat_guard: plugin_opt_limits takes PREFIX=PER_SECOND (1-1000000),"
				" comma-separated, not '%s'", item);
		return false;
	}
	if(guard.limit_count == MAX_LIMITS){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"gochat_guard: plugin_opt_limits names more than %d prefixes", MAX_LIMITS);
		return false;
	}
	*equals = '\0';
	struct limit *limit = &guard.limits[guard.limit_count++];
	strcpy(limit->prefix, item);
	limit->per_s = per_s;
	return true;
}

static bool parse_limits(const char *value)
{
	guard.limit_count = 0;
	return each_item(value, "limits", parse_limit);
}

static bool parse_options(struct mosquitto_opt *options, int option_count)
{
	if(!parse_servers("gochat-server,gochat-server-*")) return false;
	strcpy(guard.own_retained, "gochat/v1/presence/%u");
	if(!parse_limits("gochat/v1/req/=40,gochat/v1/room/=100")) return false;
	for(int i = 0; i < option_count; i++){
		const char *key = options[i].key, *value = options[i].value ? options[i].value : "";
		bool ok;
		if(!strcmp(key, "servers")) ok = parse_servers(value);
		else if(!strcmp(key, "own_retained")) ok = copy_text(guard.own_retained, value, key);
		else if(!strcmp(key, "limits")) ok = parse_limits(value);
		else{
			mosquitto_log_printf(MOSQ_LOG_ERR,
					"gochat_guard: unknown option plugin_opt_%s (servers, own_retained,"
					" limits)", key);
			ok = false;
		}
		if(!ok) return false;
	}
	if(guard.server_count == 0 || guard.own_retained[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"gochat_guard: servers and own_retained must not be empty");
		return false;
	}
	return true;
}

/* ---------------------------------------------------------------- plugin interface */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	memset(&guard, 0, sizeof(guard));
	if(!parse_options(options, option_count)) return MOSQ_ERR_INVAL;
	guard.windows = mosquitto_calloc(SLOTS, sizeof(struct window));
	if(guard.windows == NULL) return MOSQ_ERR_NOMEM;
	guard.id = identifier;
	guard.last_log_ms = now_ms() - LOG_EVERY_MS;
	int rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_free(guard.windows);
		guard.windows = NULL;
		return rc;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"gochat_guard: retained publishes only from %s... or on %s; %d rate limit(s)",
			guard.servers[0], guard.own_retained, guard.limit_count);
	for(int rule = 0; rule < guard.limit_count; rule++){
		mosquitto_log_printf(MOSQ_LOG_INFO, "gochat_guard: at most %lu/s per client on %s*",
				guard.limits[rule].per_s, guard.limits[rule].prefix);
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if(guard.id != NULL){
		mosquitto_callback_unregister(guard.id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	}
	mosquitto_free(guard.windows);
	memset(&guard, 0, sizeof(guard));
	return MOSQ_ERR_SUCCESS;
}
