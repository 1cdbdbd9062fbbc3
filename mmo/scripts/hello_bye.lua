near = {}                      -- players within 1 cell (this NPC's own table)

function set_uid(x)
   myid = x
end

local function dist(a, b)
   return math.max(math.abs(API_get_x(a) - API_get_x(b)),
                   math.abs(API_get_y(a) - API_get_y(b)))
end

function event_player_move(player)
   local d = dist(myid, player)
   if d <= 1 and not near[player] then
      near[player] = true
      API_SendMessage(myid, player, "HELLO")
   elseif d > 1 and near[player] then
      near[player] = nil
      API_SendMessage(myid, player, "BYE")
   end
end
