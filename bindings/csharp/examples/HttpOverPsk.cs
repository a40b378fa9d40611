// HTTP/1.1 over TLS-PSK with PskStream: a oneM2M-style exchange in a few
// lines each side. HttpListener and HttpClient cannot take a custom stream
// (HttpListener owns its sockets; Mono's HttpClient has no connect
// callback), so this speaks the protocol's small subset by hand: one
// request with a Content-Length body, one response. Compiled into the test
// program (StreamTests.HttpRequestOverPsk runs it).
using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Org.M2mpsk.Examples {
  public static class HttpOverPsk {
    /// Serves one connection: answers 201 to a request whose X-M2M-Origin
    /// this association may carry, else 403 with the RSC (4106/4107).
    public static void ServeOne(TcpListener listener, Keystore keystore, string cseId) {
      using (TcpClient tcp = listener.AcceptTcpClient())
      using (var psk = new PskStream(tcp.GetStream())) {
        psk.AuthenticateAsServer(new PskServerOptions { Keystore = keystore, LocalId = cseId });
        Dictionary<string, string> headers;
        string requestLine = ReadHead(psk, out headers);
        string from;
        headers.TryGetValue("x-m2m-origin", out from);
        ReadBody(psk, headers); // the resource itself: a real CSE would parse it
        bool create = requestLine.StartsWith("POST ") && headers.ContainsKey("content-type") &&
                      headers["content-type"].Contains("ty=2");
        int rsc = psk.OriginatorCheck(from, create ? M2mpsk.ORIGINATOR_AE_CREATE : 0);
        string reply = rsc == M2mpsk.ORIGINATOR_ACCEPT
                           ? Response(201, "Created", 2001, "{\"m2m:ae\":{\"aei\":\"" + from + "\"}}")
                           : Response(403, "Forbidden", rsc, "{\"m2m:dbg\":\"originator " + from + "\"}");
        byte[] b = Encoding.UTF8.GetBytes(reply);
        psk.Write(b, 0, b.Length);
      } // Dispose sends close_notify
    }

    /// Sends one request and returns the status line and the body.
    public static string Request(IPEndPoint server, Keystore keystore, string kpsaId, string method,
                                 string path, string from, string contentType, string body,
                                 out string responseBody) {
      using (var tcp = new TcpClient()) {
        tcp.Connect(server);
        using (var psk = new PskStream(tcp.GetStream())) {
          psk.AuthenticateAsClient(new PskClientOptions { Keystore = keystore, KpsaId = kpsaId });
          byte[] content = Encoding.UTF8.GetBytes(body ?? "");
          string head = method + " " + path + " HTTP/1.1\r\nHost: " + server + "\r\n" +
                        "X-M2M-Origin: " + from + "\r\nX-M2M-RI: 1\r\n" +
                        "Content-Type: " + contentType + "\r\nContent-Length: " + content.Length +
                        "\r\nConnection: close\r\n\r\n";
          byte[] h = Encoding.ASCII.GetBytes(head);
          psk.Write(h, 0, h.Length);
          psk.Write(content, 0, content.Length);
          Dictionary<string, string> headers;
          string status = ReadHead(psk, out headers);
          responseBody = ReadBody(psk, headers);
          return status + " rsc=" + (headers.ContainsKey("x-m2m-rsc") ? headers["x-m2m-rsc"] : "");
        }
      }
    }

    static string Response(int status, string text, int rsc, string json) {
      return "HTTP/1.1 " + status + " " + text + "\r\nX-M2M-RSC: " + rsc + "\r\nX-M2M-RI: 1\r\n" +
             "Content-Type: application/json\r\nContent-Length: " + Encoding.UTF8.GetByteCount(json) +
             "\r\nConnection: close\r\n\r\n" + json;
    }

    // The head, byte by byte up to the blank line (8 KiB at most), then
    // exactly Content-Length bytes: nothing read past the message.
    static string ReadHead(Stream s, out Dictionary<string, string> headers) {
      var head = new List<byte>();
      while (head.Count < 8192) {
        int c = s.ReadByte();
        if (c < 0)
          throw new IOException("the connection ended inside the head");
        head.Add((byte)c);
        int n = head.Count;
        if (n >= 4 && head[n - 4] == '\r' && head[n - 3] == '\n' && head[n - 2] == '\r' && head[n - 1] == '\n')
          break;
      }
      string[] lines = Encoding.ASCII.GetString(head.ToArray()).Split(new[] { "\r\n" }, StringSplitOptions.None);
      headers = new Dictionary<string, string>();
      for (int i = 1; i < lines.Length; i++) {
        int colon = lines[i].IndexOf(':');
        if (colon > 0)
          headers[lines[i].Substring(0, colon).Trim().ToLowerInvariant()] = lines[i].Substring(colon + 1).Trim();
      }
      return lines[0];
    }

    static string ReadBody(Stream s, Dictionary<string, string> headers) {
      string len;
      int n = headers.TryGetValue("content-length", out len) ? int.Parse(len) : 0;
      if (n < 0 || n > 1 << 20)
        throw new IOException("Content-Length out of range");
      var b = new byte[n];
      for (int got = 0; got < n;) {
        int r = s.Read(b, got, n - got);
        if (r == 0)
          throw new IOException("the connection ended inside the body");
        got += r;
      }
      return Encoding.UTF8.GetString(b);
    }
  }
}
