"""Sends argv[3] POSTs of the JSON body in argv[2] to the URL argv[1] over argv[4] keep-alive connections
(default 1), each sending its share one after another (API_KEY from the environment); fails on any answer
but 200. With several connections the server sees concurrent requests, so its batches hold several rows."""
import http.client, os, sys, threading, urllib.parse

url, body, n = urllib.parse.urlparse(sys.argv[1]), open(sys.argv[2], "rb").read(), int(sys.argv[3])
connections = int(sys.argv[4]) if len(sys.argv) > 4 else 1
headers = {"content-type": "application/json", "authorization": f"Bearer {os.environ['API_KEY']}"}
failures = []


def send(count):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    for _ in range(count):
        conn.request("POST", url.path, body, headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            failures.append(f"{url.path}: {r.status}")
            return


threads = [threading.Thread(target=send, args=(n // connections + (i < n % connections),)) for i in range(connections)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failures:
    sys.exit(failures[0])
