import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Makes SWIG's Java output valid Javadoc, in place, for every .java file of
 * a directory:
 *
 * <ul>
 *   <li>the doc comments SWIG's -doxygen translates from the C header and
 *       m2mpsk.i carry placeholders such as {@code "12-<KpsaID>"}, which
 *       Javadoc reads as unknown HTML tags: they are escaped;
 *   <li>where m2mpsk_java.swg gives a method a doc comment written for Java
 *       (with %javamethodmodifiers), SWIG still writes the translated one
 *       first: the first of two consecutive doc comments is dropped.
 * </ul>
 *
 * <p>Run by the jar's build: {@code java FixJavadoc.java DIR}.
 */
public class FixJavadoc {
  static final Set<String> HTML = new HashSet<>(Arrays.asList(
      "a", "b", "i", "em", "strong", "code", "pre", "p", "br", "ul", "ol", "li", "dl", "dt",
      "dd", "table", "tr", "td", "th", "tt", "sup", "sub", "blockquote", "h2", "h3"));
  static final Pattern TAG = Pattern.compile("<(/?)([A-Za-z][A-Za-z0-9_-]*)([^<>]*)>");
  static final Pattern TWO_COMMENTS =
      Pattern.compile("(?s)[ \\t]*/\\*\\*(?:(?!\\*/).)*\\*/\\s*\\n(\\s*/\\*\\*)");

  public static void main(String[] args) throws Exception {
    try (DirectoryStream<Path> dir = Files.newDirectoryStream(Paths.get(args[0]), "*.java")) {
      for (Path p : dir) {
        String in = new String(Files.readAllBytes(p), StandardCharsets.UTF_8);
        String out = fix(in);
        if (!out.equals(in)) {
          Files.write(p, out.getBytes(StandardCharsets.UTF_8));
        }
      }
    }
  }

  static String fix(String src) {
    String s = TWO_COMMENTS.matcher(src).replaceAll("$1");
    StringBuilder out = new StringBuilder();
    int i = 0;
    while (true) {
      int start = s.indexOf("/**", i);
      if (start < 0) break;
      int end = s.indexOf("*/", start);
      out.append(s, i, start).append(escape(s.substring(start, end)));
      i = end;
    }
    return out.append(s.substring(i)).toString();
  }

  static final Pattern CODE = Pattern.compile("\\{@code[^}]*\\}");

  /** Escapes the <word> of a comment that are not HTML, outside {@code}. */
  static String escape(String comment) {
    Matcher c = CODE.matcher(comment);
    StringBuilder out = new StringBuilder();
    int i = 0;
    while (c.find()) {
      out.append(escapeText(comment.substring(i, c.start()))).append(c.group());
      i = c.end();
    }
    return out.append(escapeText(comment.substring(i))).toString();
  }

  static String escapeText(String comment) {
    Matcher m = TAG.matcher(comment);
    StringBuffer b = new StringBuffer();
    while (m.find()) {
      String r = HTML.contains(m.group(2).toLowerCase()) ? m.group()
          : "&lt;" + m.group(1) + m.group(2) + m.group(3) + "&gt;";
      m.appendReplacement(b, Matcher.quoteReplacement(r));
    }
    m.appendTail(b);
    return b.toString();
  }
}
