#include "net/websocket_session.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <deque>
#include <unordered_map>

#include "net/websocket_protocol.hpp"

namespace troupe::net {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

class WebsocketSession : public Session, public std::enable_shared_from_this<WebsocketSession> {
 public:
  WebsocketSession(tcp::socket&& socket, std::string upgrade_request, SessionContext& context)
      : ws_(std::move(socket)),
        upgrade_request_(std::move(upgrade_request)),
        context_(context),
        mailbox_(std::make_shared<Mailbox>(ws_.get_executor())) {}
  ~WebsocketSession() override { context_.registry.remove(this); }

  void run() {
    context_.registry.add(this, weak_from_this());
    asio::dispatch(ws_.get_executor(), [self = shared_from_this()] { self->accept(); });
  }

  void shutdown() override {
    asio::post(ws_.get_executor(), [self = shared_from_this()] { self->close(websocket::close_code::going_away); });
  }

 private:
  void accept() {
    // The WebSocket stream keeps its own timeouts (handshake 30 s; a ping after idle time, closing
    // a peer that stopped answering); the TCP layer's would cut long conversations.
    beast::get_lowest_layer(ws_).expires_never();
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& response) { response.set(beast::http::field::server, "troupe"); }));
    ws_.read_message_max(context_.limits.max_request_bytes);
    // The HTTP session already read the upgrade request: hand its bytes to the handshake.
    ws_.async_accept(asio::buffer(upgrade_request_), [self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->close_now();
      self->open_ = true;
      self->read();
    });
  }

  void read() {
    ws_.async_read(buffer_, [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (closed_) return;
    // The client closed or vanished, or broke the protocol (Beast then already sent the close
    // frame, e.g. 1009 for a message over read_message_max): abort its conversations.
    if (ec) return close_now();
    if (closing_) return read();    // until the peer's close frame arrives, messages are moot
    std::string text = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    if (!ws_.got_text()) {
      send(ws_error(std::nullopt, RequestError(400, "binary messages are not part of the protocol: send JSON text")));
    } else {
      on_message(text);
    }
    read();
  }

  void on_message(std::string_view text) {
    WsClientMessage message;
    try {
      message = parse_ws_message(text);
    } catch (const WsProtocolError& e) {
      return send(ws_error(e.id, e.error));
    }
    if (message.kind == WsClientMessage::Kind::cancel) {
      // Cancelling a finished or unknown conversation is not an error: done may already be on its way.
      if (auto it = conversations_.find(message.id); it != conversations_.end()) context_.api.engine().abort(it->second.engine_id);
      return;
    }
    try {
      check_model(message.chat.model, context_.api.model().id);
      if (conversations_.contains(message.id))
        throw RequestError(400, "a conversation with id \"" + message.id + "\" is in flight on this socket", "id");
      if (conversations_.size() >= context_.limits.max_ws_generations)
        throw RequestError(429, "too many conversations in flight on this socket (the limit is " +
                                    std::to_string(context_.limits.max_ws_generations) + ")",
                           "", "RateLimitError");
      start(message.id, std::move(generate_requests(message.chat).front()));
    } catch (const RequestError& e) {
      send(ws_error(message.id, e));
    } catch (const std::invalid_argument& e) {
      send(ws_error(message.id, RequestError(400, e.what())));
    } catch (const std::exception& e) {
      send(ws_error(message.id, RequestError(500, e.what(), "", "InternalServerError")));
    }
  }

  void start(const std::string& id, GenerateRequest request) {
    // The serial tells events of this conversation from those of an earlier one with the same id.
    const uint64_t serial = ++serial_;
    // The engine may keep the listener past this session's (or the server's) life: it holds the
    // session weakly and reaches the strand through the mailbox.
    auto listener = [weak = weak_from_this(), id, serial, post = make_post(context_.gate, mailbox_)](const GenerateEvent& event) {
      post([weak, id, serial, event] {
        if (auto self = weak.lock()) self->on_event(id, serial, event);
      });
    };
    const uint64_t engine_id = context_.api.engine().generate(std::move(request), std::move(listener));
    conversations_[id] = {engine_id, serial};
  }

  void on_event(const std::string& id, uint64_t serial, const GenerateEvent& event) {
    auto it = conversations_.find(id);
    if (closed_ || it == conversations_.end() || it->second.serial != serial) return;
    if (!event.text.empty()) send(ws_delta(id, event.text));
    if (!event.final) return;
    conversations_.erase(it);
    if (event.finish_reason == "error")
      return send(ws_error(id, RequestError(500, event.error.empty() ? "the engine failed" : event.error, "", "InternalServerError")));
    send(ws_done(id, event.finish_reason, Usage{event.prompt_tokens, event.completion_tokens, event.cached_tokens}));
  }

  void send(std::string message) {
    if (closed_) return;
    outbox_bytes_ += message.size();
    outbox_.push_back(std::move(message));
    // A client that stops reading must not make us buffer without end.
    if (outbox_bytes_ > context_.limits.max_pending_output) return close_now();
    if (!writing_) write_next();
  }

  void write_next() {
    if (outbox_.empty() || closed_) return;
    writing_ = true;
    ws_.text(true);
    ws_.async_write(asio::buffer(outbox_.front()), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->close_now();
      self->outbox_bytes_ -= self->outbox_.front().size();
      self->outbox_.pop_front();
      self->write_next();
    });
  }

  void abort_all() {
    for (auto& [id, conversation] : conversations_) context_.api.engine().abort(conversation.engine_id);
    conversations_.clear();
  }

  // A polite close (server shutdown): abort, send the close frame once the pending write is done
  // (Beast holds it until then), then drop the connection.
  void close(websocket::close_code code) {
    if (closed_ || closing_) return;
    if (!open_) return close_now();  // a close frame cannot overtake the handshake
    closing_ = true;
    abort_all();
    ws_.async_close(code, [self = shared_from_this()](beast::error_code) { self->close_now(); });
  }

  void close_now() {
    if (closed_) return;
    closed_ = true;
    abort_all();
    outbox_.clear();
    beast::error_code ec;
    beast::get_lowest_layer(ws_).socket().shutdown(tcp::socket::shutdown_both, ec);
    beast::get_lowest_layer(ws_).close();
  }

  struct Conversation {
    uint64_t engine_id = 0;
    uint64_t serial = 0;
  };

  websocket::stream<beast::tcp_stream> ws_;
  std::string upgrade_request_;
  SessionContext& context_;
  std::shared_ptr<Mailbox> mailbox_;
  beast::flat_buffer buffer_;
  std::unordered_map<std::string, Conversation> conversations_;
  uint64_t serial_ = 0;
  std::deque<std::string> outbox_;
  size_t outbox_bytes_ = 0;
  bool writing_ = false;
  bool open_ = false;  // the handshake is done
  bool closing_ = false;
  bool closed_ = false;
};

}  // namespace

void run_websocket_session(tcp::socket socket, std::string upgrade_request, SessionContext& context) {
  std::make_shared<WebsocketSession>(std::move(socket), std::move(upgrade_request), context)->run();
}

}  // namespace troupe::net
